package baseline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"

	"github.com/redpacketset/redpacket/cellserver/httpapi"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/store/storetest"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// BenchmarkHTTPHotOpens is the end-to-end comparison: 256 HTTP clients opening hot packets
// through the real API, once with the queue bypassed (every open its own SELECT … FOR UPDATE
// transaction, the naive server) and once with the per-packet queue and group commit. Client,
// server and MariaDB share the machine, as they would on one node.
func BenchmarkHTTPHotOpens(b *testing.B) {
	m := testenv.StartMariaDB(b, testenv.WithBufferPool("256M"))
	env := storetest.NewOn(b, m, storetest.Options{MaxConns: Callers + 64})
	limits := packet.DefaultLimits
	limits.MaxCount, limits.MaxTotalCents = 1<<30, 1<<50
	svc := packet.New(env.Store, &storetest.IDs{}, packet.Config{Limits: limits})
	hot := 1
	if v, err := strconv.Atoi(os.Getenv("RP_BENCH_HOT")); err == nil && v > 0 {
		hot = v
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 2 * Callers, MaxIdleConnsPerHost: 2 * Callers}}
	serve := func(b *testing.B, q httpapi.Queue) string {
		api, err := httpapi.New(httpapi.Config{Service: svc, Queue: q})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(api)
		b.Cleanup(ts.Close)
		return ts.URL
	}
	queued := func(b *testing.B, cfg queue.Config) httpapi.Queue {
		q, err := queue.New(svc, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = q.Close(context.Background()) })
		return q
	}
	open := func(base string) func(ctx context.Context, id int64, user string) error {
		return func(ctx context.Context, id int64, user string) error {
			body, _ := json.Marshal(map[string]string{"user": user})
			resp, err := client.Post(base+"/v1/packets/"+strconv.FormatInt(id, 10)+"/open", "application/json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("open: %d %s", resp.StatusCode, raw)
			}
			return nil
		}
	}
	b.Run("e_http_naive_for_update", func(b *testing.B) {
		runStrategy(b, env, svc, hot, strategy{"e_http_naive_for_update", open(serve(b, Naive{svc}))})
	})
	b.Run("f_http_queue_group_commit", func(b *testing.B) {
		runStrategy(b, env, svc, hot, strategy{"f_http_queue_group_commit", open(serve(b, queued(b, queue.Config{Workers: 32, Depth: 4 * Callers})))})
	})
	resultsMu.Lock()
	defer resultsMu.Unlock()
	printTable("hot-packet opens through HTTP", []string{"e_http_naive_for_update", "f_http_queue_group_commit"})
}
