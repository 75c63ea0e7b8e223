package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

func benchTable() *routing.Table {
	var ranges []routing.SlotRange
	for i := range 10 {
		ranges = append(ranges, routing.SlotRange{Start: i * 100, End: i*100 + 99, Cell: fmt.Sprintf("rp-cell-%d", i)})
	}
	return &routing.Table{Set: "rp", SlotCount: 1000,
		Epochs: []routing.Epoch{{Number: 1, EffectiveTime: epoch1, Ranges: ranges}},
		Masked: []routing.MaskedRange{{Start: 10, End: 19}, {Start: 500, End: 509}}}
}

// BenchmarkPickSlot is the per-create cost of choosing a slot over 1000 slots.
func BenchmarkPickSlot(b *testing.B) {
	t := benchTable()
	g := &Gateway{ready: &readiness{ready: map[string][]string{}}}
	for _, c := range t.AllCells() {
		g.ready.ready[c] = []string{"http://a", "http://b"}
	}
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, _, ok := g.pickSlot(t, now, int64(i), "", nil); !ok {
			b.Fatal("no slot")
		}
	}
}

// BenchmarkOpenThroughGateway is one open through the gateway to a verifying cell over real
// HTTP on loopback: the gateway's whole added cost plus one hop.
func BenchmarkOpenThroughGateway(b *testing.B) {
	h := newHarness(b, twoEpochTable(), 2, cellsABC()...)
	id := fmt.Sprintf("/v1/packets/%d/open", packetID(b, epoch2.Add(time.Hour), 3, 0))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(h.front.URL+id, "application/json", strings.NewReader(`{"userId":"u"}`))
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}
