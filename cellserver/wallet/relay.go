// Package wallet owns what happens after the money path commits: the outbox relay that
// delivers each committed effect (escrow transfer on pay, credit on open, refund at expiry,
// history lines) to its consumer until acknowledged, and a reference wallet in MySQL — a
// double-entry ledger, idempotent by the outbox row's key — with an Audit that checks
// docs/design.md §4 end to end.
//
// The relay gives at-least-once delivery; the consumer's unique key on the idempotency key
// turns it into exactly-once effect. Nothing here may ever change a packet row, decide an
// amount or mark an outbox row delivered before its consumer acknowledged it: the cell's
// records are the truth the ledger is audited against.
package wallet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// Transfer is one wallet effect of a committed packet transaction.
type Transfer struct {
	Key         string // the outbox row's idempotency key (e.g. credit:<packet>:<user>)
	Kind        store.OutboxKind
	PacketID    int64
	Account     string // the user credited, or the sender paying / refunded
	AmountCents int64
	At          time.Time
}

// Wallet applies transfers all or nothing, each at most once per key: applying a key again
// is a success that changes nothing.
type Wallet interface {
	Apply(ctx context.Context, ts []Transfer) error
}

// History stores history lines idempotently; *store.Store satisfies it.
type History interface {
	RecordHistory(ctx context.Context, hs ...store.HistoryItem) error
}

// RelayConfig tunes the relay; zero fields take the defaults.
type RelayConfig struct {
	Interval    time.Duration // poll period when idle; default 200ms
	Batch       int           // rows per pass; default 500
	BaseBackoff time.Duration // first retry delay; default 500ms
	MaxBackoff  time.Duration // default 1m
	// ClaimFor is how long claimed rows are hidden from the cell's other relays while this
	// one delivers them (default 30s); a relay that dies mid-batch delays them by this much.
	ClaimFor time.Duration
	// PassTimeout bounds one pass (default 10s). A statement on a connection to an instance
	// that vanished (a deleted database pod after a failover) would otherwise wait for TCP to
	// give up, minutes, holding every credit behind it; cut off, the pass hands its rows back
	// and the next one runs on a fresh connection.
	PassTimeout time.Duration
	Now         func() time.Time
	Log         *slog.Logger
	Registerer  prometheus.Registerer
}

// Relay moves outbox rows to the wallet and history.
type Relay struct {
	st          *store.Store
	wallet      Wallet
	hist        History
	histInStore bool
	cfg         RelayConfig
	delivered   *prometheus.CounterVec
	failed      prometheus.Counter

	// unsettled are rows this relay claimed whose outcome it could not record (the database
	// went away mid-pass, as in a failover): it hands them back at its next pass, so they wait
	// for that pass, not for the ClaimFor that hides them from the cell's other relays.
	mu        sync.Mutex
	unsettled []int64
}

// NewRelay builds a relay over a store's outbox.
func NewRelay(st *store.Store, w Wallet, h History, cfg RelayConfig) (*Relay, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 200 * time.Millisecond
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.ClaimFor <= 0 {
		cfg.ClaimFor = 30 * time.Second
	}
	if cfg.PassTimeout <= 0 {
		cfg.PassTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	// History kept in the cell's own store commits with the delivered mark (one transaction
	// per pass instead of two); any other History is written, then the mark.
	histInStore := false
	if hs, ok := h.(*store.Store); ok && hs == st {
		histInStore = true
	}
	r := &Relay{st: st, wallet: w, hist: h, histInStore: histInStore, cfg: cfg,
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_outbox_delivered_total", Help: "Outbox rows acknowledged by their consumer.",
		}, []string{"kind"}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_outbox_delivery_failures_total", Help: "Failed outbox deliveries (retried with backoff).",
		}),
	}
	if cfg.Registerer != nil {
		backlog := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "redpacket_outbox_backlog", Help: "Undelivered outbox rows.",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n, _ := st.OutboxBacklog(ctx)
			return float64(n)
		})
		for _, c := range []prometheus.Collector{r.delivered, r.failed, backlog} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("relay: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		for {
			n, err := r.Pass(ctx)
			if err != nil && ctx.Err() == nil {
				r.cfg.Log.Error("outbox relay pass", "err", err)
			}
			if err != nil || n < r.cfg.Batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Drain relays until no undelivered row is left or ctx ends; rows waiting out a backoff (or
// claimed by another relay) are taken as soon as they are due. Shutdown and tests use it.
func (r *Relay) Drain(ctx context.Context) error {
	for {
		if _, err := r.Pass(ctx); err != nil {
			return err
		}
		n, err := r.st.OutboxBacklog(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain outbox (%d rows left): %w", n, ctx.Err())
		case <-time.After(r.cfg.Interval):
		}
	}
}

// Pass delivers one batch of due rows and returns how many it looked at. The batch goes to
// each consumer in one call; when that fails, rows are retried one by one so a single bad
// row backs off alone instead of holding the others back. A pass longer than PassTimeout is
// cut off and its rows handed back.
func (r *Relay) Pass(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PassTimeout)
	defer cancel()
	if err := r.releaseUnsettled(ctx); err != nil {
		return 0, err
	}
	rows, err := r.st.ClaimOutbox(ctx, r.cfg.Now(), r.cfg.Batch, r.cfg.ClaimFor)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	r.hold(rows)
	n, err := r.pass(ctx, rows)
	if err == nil {
		r.settle()
	}
	return n, err
}

// pass delivers claimed rows; an error leaves some of them claimed without an outcome.
func (r *Relay) pass(ctx context.Context, rows []store.OutboxRow) (int, error) {
	if err := r.deliver(ctx, rows); err == nil {
		return len(rows), nil
	}
	if ctx.Err() != nil {
		return 0, r.release(rows, ctx.Err())
	}
	for i, row := range rows {
		if ctx.Err() != nil {
			return len(rows), r.release(rows[i:], ctx.Err())
		}
		if err := r.deliver(ctx, []store.OutboxRow{row}); err != nil {
			r.failed.Inc()
			next := r.cfg.Now().Add(r.backoff(row.Attempts))
			r.cfg.Log.Warn("outbox delivery failed", "key", row.Key, "attempt", row.Attempts+1, "retryAt", next, "err", err)
			if err := r.st.MarkFailed(ctx, row.ID, next, err); err != nil {
				return len(rows), err
			}
		}
	}
	return len(rows), nil
}

// hold remembers rows as claimed without an outcome yet; settle forgets them once every one
// has one (delivered, failed with a retry time, or released).
func (r *Relay) hold(rows []store.OutboxRow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, row := range rows {
		r.unsettled = append(r.unsettled, row.ID)
	}
}

func (r *Relay) settle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unsettled = r.unsettled[:0]
}

// releaseUnsettled hands back what an earlier pass left claimed. Releasing a row another relay
// has since delivered changes nothing (it is no longer undelivered); one it has claimed is
// merely due again, and every consumer is idempotent on the row's key.
func (r *Relay) releaseUnsettled(ctx context.Context) error {
	r.mu.Lock()
	ids := slices.Clone(r.unsettled)
	r.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := r.st.ReleaseClaims(ctx, ids); err != nil {
		return fmt.Errorf("hand back %d outbox rows an earlier pass left claimed: %w", len(ids), err)
	}
	r.settle()
	return nil
}

// release hands claimed rows back when the relay stops mid-batch, so the next relay (or the
// shutdown drain) takes them at once rather than after the claim period.
func (r *Relay) release(rows []store.OutboxRow, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.st.ReleaseClaims(ctx, rowIDs(rows)); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

func rowIDs(rows []store.OutboxRow) []int64 {
	out := make([]int64, len(rows))
	for i, row := range rows {
		out[i] = row.ID
	}
	return out
}

func (r *Relay) backoff(attempts int) time.Duration {
	d := r.cfg.BaseBackoff
	for i := 0; i < attempts && d < r.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.cfg.MaxBackoff)
}

var errUnknownKind = errors.New("unknown outbox kind")

// deliver hands rows to their consumers, then marks them delivered: with the history lines in
// one transaction when the history lives in the cell's store, after them otherwise.
func (r *Relay) deliver(ctx context.Context, rows []store.OutboxRow) error {
	var ts []Transfer
	var hs []store.HistoryItem
	for _, row := range rows {
		switch row.Kind {
		case store.OutboxPay, store.OutboxRefund:
			ts = append(ts, Transfer{Key: row.Key, Kind: row.Kind, PacketID: row.PacketID, Account: row.Account, AmountCents: row.AmountCents, At: row.At})
		case store.OutboxCredit:
			// An open's one row is both the credit and the receiver's history line.
			ts = append(ts, Transfer{Key: row.Key, Kind: row.Kind, PacketID: row.PacketID, Account: row.Account, AmountCents: row.AmountCents, At: row.At})
			hs = append(hs, store.HistoryItem{User: row.Account, Role: store.RoleReceived, PacketID: row.PacketID, At: row.At, AmountCents: row.AmountCents})
		case store.OutboxHistorySent:
			hs = append(hs, store.HistoryItem{User: row.Account, Role: store.RoleSent, PacketID: row.PacketID, At: row.At, AmountCents: row.AmountCents, Count: row.Count, Group: row.Group})
		case store.OutboxHistoryRecv:
			hs = append(hs, store.HistoryItem{User: row.Account, Role: store.RoleReceived, PacketID: row.PacketID, At: row.At, AmountCents: row.AmountCents})
		default:
			return fmt.Errorf("outbox row %d kind %d: %w", row.ID, row.Kind, errUnknownKind)
		}
	}
	if len(ts) > 0 {
		if err := r.wallet.Apply(ctx, ts); err != nil {
			return fmt.Errorf("apply %d transfers: %w", len(ts), err)
		}
	}
	var err error
	if r.histInStore {
		err = r.st.RecordHistoryDelivered(ctx, hs, rowIDs(rows))
	} else if err = r.hist.RecordHistory(ctx, hs...); err == nil {
		err = r.st.MarkDelivered(ctx, rowIDs(rows))
	}
	if err != nil {
		return err
	}
	for _, row := range rows {
		r.delivered.WithLabelValues(row.Kind.String()).Inc()
	}
	return nil
}
