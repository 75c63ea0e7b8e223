package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func routingFileJSON(epochs int) string {
	s := `{"set":"s","slotCount":1000,"epochs":[`
	for n := 1; n <= epochs; n++ {
		if n > 1 {
			s += ","
		}
		s += fmt.Sprintf(`{"number":%d,"effectiveTime":"2024-01-0%dT00:00:00Z","ranges":[{"start":0,"end":999,"cell":"cell-0"}]}`, n, n)
	}
	return s + `],"masked":[]}`
}

// scrapeValue reads one unlabelled sample from a Prometheus text exposition.
func scrapeValue(t *testing.T, base, name string) (float64, error) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("%s not exported", name)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// TestServerReportsHeldEpochAndLagGauges: the server exports the routing epoch it holds and
// the outbox and settlement lag readings, and records its epoch in the control schema at
// start and again after a reload, which is what a roll-out check reads.
func TestServerReportsHeldEpochAndLagGauges(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	path := t.TempDir() + "/routing.json"
	if err := os.WriteFile(path, []byte(routingFileJSON(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RoutingFile, cfg.RoutingPoll = path, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done := startServer(t, ctx, cfg)
	db, err := sql.Open("mysql", m.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	held := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, gerr := scrapeValue(t, base, "redpacket_ids_routing_epoch")
			reps, rerr := control.ReadRoutingEpochs(ctx, db, cfg.ControlSchema, time.Time{})
			if gerr == nil && rerr == nil && got == float64(want) && len(reps) == 1 && reps[0].Server == cfg.ServerName && reps[0].Epoch == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("want epoch %d held: gauge %v (%v), reports %+v (%v)", want, got, gerr, reps, rerr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	held(1)
	if err := os.WriteFile(path, []byte(routingFileJSON(2)), 0o644); err != nil {
		t.Fatal(err)
	}
	held(2)
	for _, name := range []string{"redpacket_outbox_oldest_age_seconds", "redpacket_refunds_overdue_seconds"} {
		if v, err := scrapeValue(t, base, name); err != nil || v != 0 {
			t.Errorf("%s on an idle cell: %v %v, want 0", name, v, err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSustainedFailsOnlyAfterTheGrace: a check that never passed fails at once (a sidecar that
// never came up), one that passed fails only once it has not passed for the grace.
func TestSustainedFailsOnlyAfterTheGrace(t *testing.T) {
	now := time.Unix(1000, 0)
	var fail bool
	check := sustained(func() error {
		if fail {
			return errors.New("no answer")
		}
		return nil
	}, 5*time.Second, func() time.Time { return now })
	fail = true
	if check() == nil {
		t.Fatal("passed before the check ever passed")
	}
	fail = false
	if err := check(); err != nil {
		t.Fatal(err)
	}
	fail = true
	for _, c := range []struct {
		after time.Duration
		ok    bool
	}{{time.Second, true}, {4 * time.Second, true}, {5 * time.Second, false}, {time.Minute, false}} {
		now = time.Unix(1000, 0).Add(c.after)
		if err := check(); (err == nil) != c.ok {
			t.Errorf("%v after the last pass: %v, want ok=%v", c.after, err, c.ok)
		}
	}
}
