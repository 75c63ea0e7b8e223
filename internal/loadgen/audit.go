package loadgen

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
)

// CellDB is where one cell's data lives.
type CellDB struct {
	Name string
	DSN  string
	// WalletDSN is where the cell's servers relay wallet transfers (cellserver -wallet-dsn);
	// empty means the cell's own database.
	WalletDSN string
	// CellSchema, WalletSchema and ShardDBPrefix name this cell's schemas when they differ
	// from the audit's (cells sharing one test server); empty means the audit's.
	CellSchema, WalletSchema, ShardDBPrefix string
}

// AuditConfig says what to audit.
type AuditConfig struct {
	Cells        []CellDB
	Layout       shard.Layout
	CellSchema   string // default rp_cell
	WalletSchema string // default rp_wallet
	// Routing, when set, checks that every packet lives in the cell owning its slot at its
	// creation second (docs/design.md §4.4).
	Routing *routing.Table
	// From, To bound the packets audited by creation time.
	From, To time.Time
	// DrainTimeout bounds the wait for every cell's outbox to be relayed; default 60 s.
	DrainTimeout time.Duration
	// Created and Shares are the client's view (Result); each must match the databases.
	Created []CreatedPacket
	Shares  []PaidShare
}

// CellAudit is one cell's line in the audit.
type CellAudit struct {
	Name      string
	Packets   int
	Receipts  int
	DrainedIn time.Duration
}

// AuditReport is the audit's outcome; OK means no violation.
type AuditReport struct {
	Cells      []CellAudit
	Violations []string
	Checked    struct{ Created, Shares int }
}

// OK reports a clean audit.
func (a *AuditReport) OK() bool { return len(a.Violations) == 0 }

func (a *AuditReport) bad(format string, args ...any) {
	a.Violations = append(a.Violations, fmt.Sprintf(format, args...))
}

// Audit checks docs/design.md §4 over every cell after its outbox drains (docs/design.md): per packet conservation,
// shares ≥ 1 cent, no user twice, ledger credits, pay and refund transfers matching the
// packet, the escrow holding exactly what remains, a balanced ledger (all via
// cellserver/wallet.Audit); every packet in the cell owning its slot at creation; and the
// client's view — every packet it created found in exactly that cell, every share it was
// paid recorded with the same amount. Set-wide, across all cells: no packet ID stored twice,
// no paymentTxnId paying two packets, no (sender, requestId) naming two packets, identifiers
// compared byte for byte. An error means the audit could not run; violations are
// in the report.
func Audit(ctx context.Context, cfg AuditConfig) (*AuditReport, error) {
	if cfg.CellSchema == "" {
		cfg.CellSchema = store.DefaultCellSchema
	}
	if cfg.WalletSchema == "" {
		cfg.WalletSchema = wallet.DefaultSchema
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = time.Minute
	}
	rep := &AuditReport{}
	home := map[int64]string{} // packet → the cell whose database holds it
	keys := newSetKeys()
	stores := map[string]*store.Store{}
	for _, c := range cfg.Cells {
		db, err := store.OpenDB(c.DSN, 8)
		if err != nil {
			return nil, fmt.Errorf("audit cell %s: %w", c.Name, err)
		}
		defer db.Close()
		ccfg := cfg
		if c.CellSchema != "" {
			ccfg.CellSchema = c.CellSchema
		}
		if c.WalletSchema != "" {
			ccfg.WalletSchema = c.WalletSchema
		}
		if c.ShardDBPrefix != "" {
			ccfg.Layout.DatabasePrefix = c.ShardDBPrefix
		}
		st, err := store.New(db, store.Config{Layout: ccfg.Layout, CellSchema: ccfg.CellSchema})
		if err != nil {
			return nil, fmt.Errorf("audit cell %s: %w", c.Name, err)
		}
		stores[c.Name] = st
		walletDB := db
		if c.WalletDSN != "" {
			if walletDB, err = store.OpenDB(c.WalletDSN, 4); err != nil {
				return nil, fmt.Errorf("audit cell %s: wallet: %w", c.Name, err)
			}
			defer walletDB.Close()
		}
		ca, err := auditCell(ctx, ccfg, c.Name, walletDB, st, rep, home, keys)
		if err != nil {
			return nil, fmt.Errorf("audit cell %s: %w", c.Name, err)
		}
		rep.Cells = append(rep.Cells, ca)
	}

	for _, p := range cfg.Created {
		rep.Checked.Created++
		got, ok := home[p.ID]
		switch {
		case !ok:
			rep.bad("packet %d: created (answered by %s) but found in no cell", p.ID, p.Cell)
		case p.Cell != "" && got != p.Cell:
			rep.bad("packet %d: create answered by %s, stored in %s", p.ID, p.Cell, got)
		}
	}
	for _, s := range cfg.Shares {
		rep.Checked.Shares++
		cell, ok := home[s.Packet]
		if !ok {
			rep.bad("packet %d: %s was paid %d cents, packet found in no cell", s.Packet, s.User, s.AmountCents)
			continue
		}
		r, err := stores[cell].Receipt(ctx, s.Packet, s.User)
		if err != nil {
			rep.bad("packet %d: %s was paid %d cents, no receive record (%v)", s.Packet, s.User, s.AmountCents, err)
			continue
		}
		if r.AmountCents != s.AmountCents {
			rep.bad("packet %d: %s was told %d cents, the receive record says %d", s.Packet, s.User, s.AmountCents, r.AmountCents)
		}
	}
	return rep, nil
}

func auditCell(ctx context.Context, cfg AuditConfig, cell string, walletDB *sql.DB, st *store.Store, rep *AuditReport, home map[int64]string, keys *setKeys) (CellAudit, error) {
	ca := CellAudit{Name: cell}
	// Wallet credits trail the money path through the outbox: wait until it is relayed.
	start := time.Now()
	deadline := start.Add(cfg.DrainTimeout)
	for {
		n, err := st.OutboxBacklog(ctx)
		if err != nil {
			return ca, fmt.Errorf("outbox backlog: %w", err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			rep.bad("cell %s: outbox still holds %d undelivered rows after %s", cell, n, cfg.DrainTimeout)
			break
		}
		select {
		case <-ctx.Done():
			return ca, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	ca.DrainedIn = time.Since(start)

	ledger, err := wallet.NewLedger(walletDB, cfg.WalletSchema)
	if err != nil {
		return ca, err
	}
	wr, err := wallet.Audit(ctx, st, ledger, cfg.From, cfg.To)
	if err != nil {
		return ca, err
	}
	ca.Packets, ca.Receipts = wr.Packets, wr.Receipts
	for _, v := range wr.Violations {
		rep.bad("cell %s: %s", cell, v)
	}
	err = st.ForEachPacket(ctx, cfg.From, cfg.To, func(p store.Packet) error {
		if prev, dup := home[p.ID]; dup {
			rep.bad("packet %d: stored in both %s and %s", p.ID, prev, cell)
		}
		home[p.ID] = cell
		keys.add(rep, cell, p)
		if cfg.Routing != nil {
			owner, _, err := cfg.Routing.PacketOwner(p.ID)
			if err != nil || owner != cell {
				rep.bad("packet %d (slot %d, created %s): stored in %s, owner %q (%v)", p.ID, ids.Slot(p.ID),
					ids.CreatedAt(p.ID).UTC().Format(time.RFC3339), cell, owner, err)
			}
		}
		return nil
	})
	return ca, err
}

// setKeys are the idempotency keys seen so far across every audited cell.
type setKeys struct {
	payments map[string]string // paymentTxnId → "packet in cell"
	wraps    map[[2]string]string
}

func newSetKeys() *setKeys {
	return &setKeys{payments: map[string]string{}, wraps: map[[2]string]string{}}
}

// add records p's keys and reports the set-wide invariants it breaks: a payment notice
// activates at most one packet, and a (sender, requestId) names at most one packet.
func (k *setKeys) add(rep *AuditReport, cell string, p store.Packet) {
	where := fmt.Sprintf("packet %d in %s", p.ID, cell)
	if p.PaymentTxnID != "" {
		if prev, dup := k.payments[p.PaymentTxnID]; dup {
			rep.bad("payment %q paid two packets: %s and %s", p.PaymentTxnID, prev, where)
		} else {
			k.payments[p.PaymentTxnID] = where
		}
	}
	wk := [2]string{p.Sender, p.RequestID}
	if prev, dup := k.wraps[wk]; dup {
		rep.bad("wrap request %q of sender %q names two packets: %s and %s", p.RequestID, p.Sender, prev, where)
	} else {
		k.wraps[wk] = where
	}
}
