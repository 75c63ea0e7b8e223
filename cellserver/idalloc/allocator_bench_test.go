package idalloc

import (
	"context"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/breaker"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// BenchmarkNext measures issuing with routing, masks and a breaker in the way: the create
// path pays this once per packet, with no I/O.
func BenchmarkNext(b *testing.B) {
	srv := testenv.SharedMariaDB(b)
	schema := srv.CreateDatabase(b, "idsbench")
	db := srv.OpenDB(b, "")
	ctx := context.Background()
	if err := control.EnsureSchema(ctx, db, schema); err != nil {
		b.Fatal(err)
	}
	tbl := &routing.Table{Set: "bench", SlotCount: 1000, Epochs: []routing.Epoch{{Number: 1,
		EffectiveTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		Ranges:        []routing.SlotRange{{Start: 0, End: 499, Cell: "a"}, {Start: 500, End: 999, Cell: "b"}}}}}
	brk, err := breaker.New(breaker.Config{Layout: testLayout})
	if err != nil {
		b.Fatal(err)
	}
	a, err := NewAllocator(ctx, AllocatorConfig{DB: db, Control: schema, Server: "bench", Cell: "a", Layout: testLayout,
		Routing: func() *routing.Table { return tbl }, Breaker: brk})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close(ctx)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Next(ctx, -1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
