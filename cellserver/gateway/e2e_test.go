package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestAgainstRealCellServers runs the gateway in front of two cells of real cellserver
// processes (the cmd/cellserver binary on a private MariaDB): one server in cell 0, two in
// cell 1. It checks that the two halves agree on the wire: slot choice on create, signatures,
// idempotent create retries, routing of pay/open/details by ID, and the history merge.
func TestAgainstRealCellServers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cellserver processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "cellserver")
	build := exec.Command(testenv.GoTool(), "build", "-o", bin, "github.com/redpacketset/redpacket/cmd/cellserver")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cellserver: %v\n%s", err, out)
	}
	m := testenv.SharedMariaDB(t)
	keyFile := filepath.Join(dir, "signing.key")
	key := []byte("e2e-gateway-signing-key-0123456789abcdef")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}

	table := &routing.Table{Set: "rp", SlotCount: 1000, Endpoints: map[string][]string{},
		Epochs: []routing.Epoch{{Number: 1, EffectiveTime: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			Ranges: []routing.SlotRange{{Start: 0, End: 499, Cell: "rp-cell-0"}, {Start: 500, End: 999, Cell: "rp-cell-1"}}}}}
	ports := map[string][]int{"rp-cell-0": {freePort(t)}, "rp-cell-1": {freePort(t), freePort(t)}}
	for cell, ps := range ports {
		for _, p := range ps {
			table.Endpoints[cell] = append(table.Endpoints[cell], fmt.Sprintf("http://127.0.0.1:%d", p))
		}
	}
	routingFile := filepath.Join(dir, "routing.json")
	data, err := table.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(routingFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for cell, ps := range ports {
		prefix := testenv.UniqueName("gw_" + strings.ReplaceAll(cell, "-", "_"))
		for i, p := range ps {
			startCellServer(t, bin, filepath.Join(dir, fmt.Sprintf("%s-%d.log", cell, i)),
				"-listen", fmt.Sprintf("127.0.0.1:%d", p), "-mysql-dsn", m.DSN(""), "-memcached", "",
				"-routing-file", routingFile, "-cell", cell, "-server-name", fmt.Sprintf("%s-server-%d", cell, i),
				"-shard-databases", "2", "-shard-tables", "2", "-shard-db-prefix", prefix+"_db_",
				"-cell-schema", prefix+"_cell", "-control-schema", prefix+"_ctl", "-wallet-schema", prefix+"_wallet",
				"-signing-key-file", keyFile, "-drain-timeout", "5s", "-mysql-max-conns", "8", "-queue-workers", "4")
		}
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := routing.NewWatcher(routingFile, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(Config{Routing: w, Signer: signing.NewSigner(key), Log: quiet, ProbeInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gw.Run(ctx)
	front := httptest.NewServer(gw.Handler())
	defer front.Close()
	// The gateway is ready once any cell serves; this test needs every server of both cells.
	deadline := time.Now().Add(2 * time.Minute)
	allReady := func() bool {
		for cell, ps := range ports {
			if len(gw.ReadyServers(cell)) < len(ps) {
				return false
			}
		}
		return gw.Ready() == nil
	}
	for !allReady() {
		if time.Now().After(deadline) {
			t.Fatalf("cell servers never all ready: %v", gw.Ready())
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}

	const packets, shares = 12, 4
	type made struct {
		id   int64
		cell string
	}
	var all []made
	perCell := map[string]int{}
	for i := range packets {
		body := fmt.Sprintf(`{"sender":"alice-%d","requestId":"wrap-%d","totalCents":1000,"count":%d,"kind":"random","group":"g"}`, i, i, shares)
		code, cell, got := jsonCall(t, "POST", front.URL+"/v1/packets", body)
		if code != http.StatusCreated {
			t.Fatalf("create %d: %d %v", i, code, got)
		}
		id, _ := strconv.ParseInt(got["packetId"].(string), 10, 64)
		if owner, _, _ := table.PacketOwner(id); owner != cell {
			t.Fatalf("packet %d (slot %d) answered by %s, owner %s", id, ids.Slot(id), cell, owner)
		}
		// A client retry of the same create finds the first packet (same slot, same cell).
		code, cell2, again := jsonCall(t, "POST", front.URL+"/v1/packets", body)
		if code != http.StatusOK || again["packetId"] != got["packetId"] || cell2 != cell {
			t.Fatalf("retried create %d: %d %v from %s, first was %v from %s", i, code, again["packetId"], cell2, got["packetId"], cell)
		}
		all = append(all, made{id, cell})
		perCell[cell]++
	}
	if len(perCell) != 2 {
		t.Errorf("%d creates all went to %v", packets, perCell)
	}
	for i, p := range all {
		if code, cell, got := jsonCall(t, "POST", fmt.Sprintf("%s/v1/packets/%d/pay", front.URL, p.id), fmt.Sprintf(`{"paymentTxnId":"pay-%d","amountCents":1000}`, i)); code != http.StatusOK || cell != p.cell {
			t.Fatalf("pay %d: %d from %s: %v", p.id, code, cell, got)
		}
		sum := int64(0)
		for u := range shares {
			code, cell, got := jsonCall(t, "POST", fmt.Sprintf("%s/v1/packets/%d/open", front.URL, p.id), fmt.Sprintf(`{"user":"user-%d"}`, u))
			if code != http.StatusOK || cell != p.cell {
				t.Fatalf("open %d by user-%d: %d from %s: %v", p.id, u, code, cell, got)
			}
			sum += int64(got["amountCents"].(float64))
		}
		if sum != 1000 {
			t.Fatalf("packet %d paid out %d of 1000", p.id, sum)
		}
		code, _, got := jsonCall(t, "GET", fmt.Sprintf("%s/v1/packets/%d", front.URL, p.id), "")
		if code != http.StatusOK || got["packet"].(map[string]any)["remainingCents"].(float64) != 0 {
			t.Fatalf("details %d: %d %v", p.id, code, got)
		}
	}

	// user-0 received from every packet in both cells; history trails the outbox relay, so
	// poll until it is all there, paging 5 at a time through the merge.
	deadline = time.Now().Add(time.Minute)
	for {
		var ids []string
		cursor := ""
		for {
			url := front.URL + "/v1/users/user-0/received?limit=5"
			if cursor != "" {
				url += "&before=" + cursor
			}
			code, _, got := jsonCall(t, "GET", url, "")
			if code != http.StatusOK {
				t.Fatalf("history: %d %v", code, got)
			}
			for _, it := range got["items"].([]any) {
				ids = append(ids, it.(map[string]any)["packetId"].(string))
			}
			if cursor, _ = got["next"].(string); cursor == "" {
				break
			}
		}
		if len(ids) == packets {
			seen := map[string]bool{}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("history repeats packet %s: %v", id, ids)
				}
				seen[id] = true
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history of user-0 has %d of %d packets: %v", len(ids), packets, ids)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
}

func jsonCall(t *testing.T, method, url, body string) (int, string, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %q", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, resp.Header.Get(routing.HeaderCell), m
}

func startCellServer(t *testing.T, bin, logFile string, args ...string) {
	t.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logFile)
			t.Logf("%s:\n%s", filepath.Base(logFile), tail(string(out), 3000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
