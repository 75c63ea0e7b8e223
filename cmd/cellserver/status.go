package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// epochReportEvery is how often a server re-reports the routing epoch it holds, besides at
// every reload; it bounds how stale the roll-out view (kubectl redpacket status) can be.
const epochReportEvery = 10 * time.Second

// registerStatusGauges adds the readings the alerts and the dashboard need that no component
// counts on its own (the epoch held is redpacket_ids_routing_epoch, the allocator's): how long the oldest owed wallet
// effect has waited, and how late the most overdue settlement (refund) is. maxLife is the
// longest a packet lives before it must be settled.
func registerStatusGauges(reg prometheus.Registerer, st *store.Store, w *routing.Watcher, maxLife time.Duration) error {
	read := func(f func(ctx context.Context) (time.Duration, error)) func() float64 {
		return func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			d, err := f(ctx)
			if err != nil {
				// NaN rather than 0: an unreadable database must not look like a healthy one.
				return nan()
			}
			return d.Seconds()
		}
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "redpacket_outbox_oldest_age_seconds",
			Help: "Age of the oldest undelivered outbox row (a wallet credit, escrow transfer or refund still owed); 0 when none. NaN when the database cannot be read.",
		}, read(func(ctx context.Context) (time.Duration, error) { return st.OutboxAge(ctx, time.Now()) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "redpacket_refunds_overdue_seconds",
			Help: "How far past its deadline the most overdue unsettled packet of the cell is (sweeper behind, or a settlement that keeps failing); 0 when none. NaN when the database cannot be read.",
		}, read(func(ctx context.Context) (time.Duration, error) {
			return st.SettlementOverdue(ctx, time.Now(), maxLife)
		})),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register status gauges: %w", err)
		}
	}
	return nil
}

// reportEpochs records in the control schema, at every reload and every epochReportEvery,
// the newest epoch this server holds, so the operator's tooling can tell whether a pending
// epoch reached every server before it takes effect (docs/operator.md, rebalancing).
func reportEpochs(ctx context.Context, db *sql.DB, schema, server string, w *routing.Watcher, log *slog.Logger) {
	tick := time.NewTicker(epochReportEvery)
	defer tick.Stop()
	for {
		changed := w.Changed()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var effective time.Time
		if t := w.Current(); t != nil && t.Latest() != nil {
			effective = t.Latest().EffectiveTime
		}
		if err := control.ReportRoutingEpoch(rctx, db, schema, server, w.LoadedEpoch(), effective); err != nil && ctx.Err() == nil {
			log.Warn("report routing epoch", "err", err, "epoch", w.LoadedEpoch())
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// followPublished loads, every poll, a newer table the operator published in the cell's
// control schema, so a new epoch reaches this server within a poll of being recorded rather
// than when the kubelet refreshes the mounted ConfigMap (60-90 s on a default kubelet, longer
// than the hand-over margin: servers stopped issuing until it arrived).
func followPublished(ctx context.Context, db *sql.DB, schema string, w *routing.Watcher, poll time.Duration, log *slog.Logger) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	failing := false
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, epoch, err := control.ReadPublishedTable(rctx, db, schema, w.LoadedEpoch())
		cancel()
		if err == nil && body != nil {
			_, err = w.Offer(body, "control schema")
		}
		if err != nil && ctx.Err() == nil && !failing {
			log.Warn("read the published routing table; the routing file still applies", "err", err, "epoch", epoch)
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func nan() float64 { return math.NaN() }
