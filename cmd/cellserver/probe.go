package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// maskProbeEvery is how often each masked logical table is probed: often enough that the
// operator sees calls in every window, rare enough to cost nothing.
var maskProbeEvery = 5 * time.Second

// maskedTables are the logical tables any of masks covers, each once.
func maskedTables(layout shard.Layout, masks []control.Mask) []shard.Table {
	seen := map[shard.Table]bool{}
	var out []shard.Table
	for _, m := range masks {
		for slot := m.Start; slot <= m.End; slot++ {
			t := layout.Of(slot)
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
			if len(seen) == layout.Databases*layout.TablesPerDB {
				return out
			}
		}
	}
	return out
}

// probeMasked reads every masked table of this cell now and then, so the error counts the
// operator decides lifts on hold calls for it: without them a table masked during an outage
// (a database restart) stays masked after it recovers, since a masked table gets no creates.
func probeMasked(ctx context.Context, masks func() []control.Mask, probe func(context.Context, shard.Table, time.Time) error, layout shard.Layout, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, tbl := range maskedTables(layout, masks()) {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := probe(pctx, tbl, time.Now()); err != nil && ctx.Err() == nil {
				log.Debug("masked table still failing", "table", layout.Name(tbl), "err", err)
			}
			cancel()
		}
	}
}
