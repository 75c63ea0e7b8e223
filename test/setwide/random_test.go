package setwide

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/store"
)

var (
	flagSeeds = flag.Int("setwide.seeds", 200, "seeds TestSetWideRandomSequences runs (CI runs the default)")
	flagSeed  = flag.Int64("setwide.seed", -1, "run only this seed (reproduces a failure)")
	flagSteps = flag.Int("setwide.steps", 10, "steps per seed")
)

// model is what clients were told, keyed byte for byte: the client view every answer must
// agree with.
type model struct {
	wraps    map[[2]string]string // (sender, requestId) → packet ID from any 2xx answer
	bodies   map[[2]string]string
	packets  map[string]*packetView
	order    []string          // packet IDs as first told: picks follow it, so a seed replays
	payments map[string]string // txn → the packet a 200 pay activated with it
	txns     []string
	keys     [][2]string
}

type packetView struct {
	id, cell string
	total    int64
	paidWith string
	opened   map[string]int64 // user → amount told
}

// faults the sequence has active, undone before the seed ends.
type faults struct {
	down   []*server
	hidden []string // physical tables renamed away: "schema.table"
	masked bool
}

// TestSetWideRandomSequences drives seeded random sequences through a three-cell SET (two
// servers in the first cell): wraps with retries, pays with fresh, reused and case-variant
// payment IDs, opens by case-variant users, masks set and lifted, scale epochs, servers killed
// and restarted, day tables unreadable for a while, and gateway clock steps. After every step it
// checks the client view and every cell's database against docs/design.md's invariants and the
// set-wide ones; after every seed, the full audit (wallet ledger included). Each seed's
// operations are a function of its number alone: -setwide.seed=N replays seed N.
func TestSetWideRandomSequences(t *testing.T) {
	// Two servers in the first cell: the seam between two servers of one cell.
	h := newHarnessOf(t, []int{2, 1, 1}, 4*time.Second)
	begin := time.Now().Add(-time.Second)
	seeds := []int64{}
	if *flagSeed >= 0 {
		seeds = append(seeds, *flagSeed)
	} else {
		for s := range *flagSeeds {
			seeds = append(seeds, int64(s))
		}
	}
	admin, err := sql.Open("mysql", h.db.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	packets, payments := 0, 0
	for _, seed := range seeds {
		ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := runSeed(t, h, admin, seed)
			packets, payments = packets+len(m.packets), payments+len(m.payments)
		})
		if !ok {
			t.Fatalf("seed %d failed: rerun with -run 'TestSetWideRandomSequences' -setwide.seed=%d", seed, seed)
		}
	}
	// Every packet is past its payment window or expiry now, or soon: each must end settled,
	// refunded to the cent, its wallet effects delivered, and the sets of keys clean.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// Every deadline must have passed, not only those of the packets unsettled so far: a
		// packet of the last seed refunded while the audit reads would look like a refund the
		// ledger lost (CI run of 2026-12-01 under load).
		open, last := h.unsettled(begin)
		if len(open) == 0 && time.Since(last) > sweepMargin {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("packets never settled after expiry (a refund lost?): %v", open)
		}
		time.Sleep(200 * time.Millisecond) // polling with a deadline
	}
	h.t = t
	rep := h.audit(begin)
	t.Logf("%d seeds: %d packets made by clients, %d paid, audit over %d cells", len(seeds), packets, payments, len(rep.Cells))
}

func runSeed(t *testing.T, h *harness, admin *sql.DB, seed int64) *model {
	h.t = t
	m := &model{wraps: map[[2]string]string{}, bodies: map[[2]string]string{}, packets: map[string]*packetView{}, payments: map[string]string{}}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5e7_1de))
	run := fmt.Sprintf("s%d-%d", seed, time.Now().UnixNano()%100000)
	from := time.Now().Add(-time.Second)
	var f faults
	defer h.undo(&f, admin)
	senders := []string{"alice", "Alice", "ALICE", "bob", "Bob"}
	users := []string{"u1", "U1", "u2", "U2", "u3", "user-" + run}
	for step := range *flagSteps {
		op := rng.IntN(100)
		switch {
		case op < 28:
			sender := senders[rng.IntN(len(senders))]
			req := run + "-r" + strconv.Itoa(rng.IntN(1000))
			if rng.IntN(4) == 0 && len(m.keys) > 0 { // a case variant of an existing key
				k := m.keys[rng.IntN(len(m.keys))]
				sender, req = k[0], flipCase(k[1], rng)
			}
			m.wrap(t, h, sender, req, int64(100+rng.IntN(900)), 1+rng.IntN(4))
		case op < 42 && len(m.keys) > 0:
			k := m.keys[rng.IntN(len(m.keys))]
			m.retry(t, h, k)
		case op < 60:
			m.pay(t, h, rng, run)
		case op < 85:
			m.open(t, h, rng, users[rng.IntN(len(users))])
		default:
			h.fault(t, rng, &f, admin)
		}
		h.check(t, m, from, fmt.Sprintf("seed %d step %d", seed, step))
	}
	h.undo(&f, admin)
	h.check(t, m, from, fmt.Sprintf("seed %d end", seed))
	return m
}

func flipCase(s string, rng *rand.Rand) string {
	b := []byte(s)
	for i := range b {
		if b[i] >= 'a' && b[i] <= 'z' && rng.IntN(2) == 0 {
			b[i] -= 'a' - 'A'
			return string(b)
		}
	}
	return strings.ToUpper(s) + "X"
}

func (m *model) wrap(t *testing.T, h *harness, sender, req string, total int64, count int) {
	k := [2]string{sender, req}
	body := wrapBody(sender, req, total, count)
	if prev, ok := m.bodies[k]; ok {
		body = prev
	}
	a := h.do("POST", "/v1/packets", body)
	if _, seen := m.bodies[k]; !seen {
		m.bodies[k] = body
		m.keys = append(m.keys, k)
	}
	m.answered(t, h, k, a, total)
}

func (m *model) retry(t *testing.T, h *harness, k [2]string) {
	a := h.do("POST", "/v1/packets", m.bodies[k])
	m.answered(t, h, k, a, 0)
}

// answered records a create's answer and checks it against every earlier one of the key.
func (m *model) answered(t *testing.T, h *harness, k [2]string, a answer, total int64) {
	t.Helper()
	if a.status != http.StatusCreated && a.status != http.StatusOK {
		if a.status < 500 && a.status != http.StatusMisdirectedRequest {
			t.Fatalf("create %v: %d %s (a valid create may only be refused as unavailable)", k, a.status, a.raw)
		}
		return
	}
	id := a.str("packetId")
	if a.str("sender") != k[0] || a.str("requestId") != k[1] {
		t.Fatalf("create %v answered with packet %s of %q/%q", k, id, a.str("sender"), a.str("requestId"))
	}
	if prev, ok := m.wraps[k]; ok && prev != id {
		t.Fatalf("wrap %v names two packets: %s and %s", k, prev, id)
	}
	if a.status == http.StatusCreated {
		if _, ok := m.wraps[k]; ok {
			t.Fatalf("wrap %v created again (%s)", k, id)
		}
	}
	m.wraps[k] = id
	if _, ok := m.packets[id]; !ok {
		n, _ := strconv.ParseInt(id, 10, 64)
		owner, _, err := h.current().PacketOwner(n)
		if err != nil || owner != a.cell {
			t.Fatalf("packet %s created by %s, owner of its slot at creation %q (%v)", id, a.cell, owner, err)
		}
		tot, _ := a.body["totalCents"].(float64)
		m.packets[id] = &packetView{id: id, cell: a.cell, total: int64(tot), opened: map[string]int64{}}
		m.order = append(m.order, id)
	}
}

func (m *model) pay(t *testing.T, h *harness, rng *rand.Rand, run string) {
	t.Helper()
	var unpaid []*packetView
	for _, id := range m.order {
		if p := m.packets[id]; p.paidWith == "" {
			unpaid = append(unpaid, p)
		}
	}
	if len(unpaid) == 0 {
		return
	}
	p := pick(unpaid, rng)
	txn := fmt.Sprintf("tx-%s-%d", run, rng.IntN(1e6))
	switch r := rng.IntN(10); {
	case r < 3 && len(m.txns) > 0: // a notice already used for another packet
		txn = m.txns[rng.IntN(len(m.txns))]
	case r < 4 && len(m.txns) > 0:
		txn = flipCase(m.txns[rng.IntN(len(m.txns))], rng)
	}
	a := h.do("POST", "/v1/packets/"+p.id+"/pay", fmt.Sprintf(`{"paymentTxnId":%q,"amountCents":%d}`, txn, p.total))
	if a.status != http.StatusOK {
		return
	}
	if prev, ok := m.payments[txn]; ok && prev != p.id {
		t.Fatalf("payment %q activated packets %s and %s", txn, prev, p.id)
	}
	m.payments[txn] = p.id
	m.txns = append(m.txns, txn)
	p.paidWith = txn
}

func (m *model) open(t *testing.T, h *harness, rng *rand.Rand, user string) {
	t.Helper()
	var paid []*packetView
	for _, id := range m.order {
		if p := m.packets[id]; p.paidWith != "" {
			paid = append(paid, p)
		}
	}
	if len(paid) == 0 {
		return
	}
	p := pick(paid, rng)
	a := h.do("POST", "/v1/packets/"+p.id+"/open", fmt.Sprintf(`{"user":%q}`, user))
	if a.status != http.StatusOK {
		return
	}
	amt := int64(a.body["amountCents"].(float64))
	if amt < 1 {
		t.Fatalf("open %s by %s: %d cents", p.id, user, amt)
	}
	if prev, ok := p.opened[user]; ok && prev != amt {
		t.Fatalf("repeated open of %s by %s: %d cents, first %d", p.id, user, amt, prev)
	}
	p.opened[user] = amt
	var sum int64
	for _, v := range p.opened {
		sum += v
	}
	if sum > p.total {
		t.Fatalf("packet %s of %d cents told %d cents to %v", p.id, p.total, sum, p.opened)
	}
}

func pick[T any](xs []T, rng *rand.Rand) T {
	return xs[rng.IntN(len(xs))]
}

// fault injects one fault, or lifts one.
func (h *harness) fault(t *testing.T, rng *rand.Rand, f *faults, admin *sql.DB) {
	t.Helper()
	switch rng.IntN(6) {
	case 0: // mask a random range of slots, or lift every mask
		if f.masked {
			h.publish(func(t *routing.Table) { t.Masked = nil })
			f.masked = false
			return
		}
		lo := rng.IntN(1000)
		hi := min(999, lo+rng.IntN(200))
		h.publish(func(t *routing.Table) {
			t.Masked = append(t.Masked, routing.MaskedRange{Start: lo, End: hi, Reason: "random", Since: time.Now().UTC().Truncate(time.Second)})
		})
		f.masked = true
	case 1: // a scale epoch: a range of slots to another cell, soon, after the servers load it
		at := time.Now().Truncate(time.Second).Add(2 * time.Second) // servers poll every 100ms here
		if last := h.current().Latest(); !at.After(last.EffectiveTime) {
			at = last.EffectiveTime.Add(time.Second)
		}
		lo := rng.IntN(1000)
		h.addEpoch(at, lo, min(999, lo+rng.IntN(300)), h.cells[rng.IntN(len(h.cells))].name)
	case 2: // kill -9 a server; a later step or the seed's end restarts it
		if len(f.down) > 0 && rng.IntN(2) == 0 {
			s := f.down[0]
			f.down = f.down[1:]
			h.restart(s)
			return
		}
		c := h.cells[rng.IntN(len(h.cells))]
		s := c.servers[rng.IntN(len(c.servers))]
		for _, d := range f.down {
			if d == s {
				return
			}
		}
		h.kill9(s)
		f.down = append(f.down, s)
	case 3, 4: // a day table unreadable for a while (as during a restore)
		if len(f.hidden) > 0 {
			h.restoreTables(t, f, admin)
			return
		}
		c := h.cells[rng.IntN(len(h.cells))]
		l := h.layout
		l.DatabasePrefix = c.prefix + "_db_"
		tbl := shard.Table{DB: rng.IntN(l.Databases), Table: rng.IntN(l.TablesPerDB)}
		for _, kind := range []string{"t", "r"} {
			name := l.Physical(kind, tbl, time.Now())
			if _, err := admin.Exec("RENAME TABLE " + name + " TO " + name + "_hidden"); err == nil {
				f.hidden = append(f.hidden, name)
			}
		}
	case 5: // step the gateway's clock, staying within the skew the hand-over tolerates
		d := time.Duration(rng.IntN(2001)-1000) * time.Millisecond
		if off := h.clock.Offset() + d; off > -2*time.Second && off < 2*time.Second {
			h.clock.Step(d)
		}
	}
}

func (h *harness) restoreTables(t *testing.T, f *faults, admin *sql.DB) {
	t.Helper()
	for _, name := range f.hidden {
		if _, err := admin.Exec("RENAME TABLE " + name + "_hidden TO " + name); err != nil {
			t.Fatalf("restore %s: %v", name, err)
		}
	}
	f.hidden = nil
}

// undo lifts every fault the seed left, so the next seed starts from a healthy set.
func (h *harness) undo(f *faults, admin *sql.DB) {
	if len(f.hidden) > 0 {
		for _, name := range f.hidden {
			_, _ = admin.Exec("RENAME TABLE " + name + "_hidden TO " + name)
		}
		f.hidden = nil
	}
	for _, s := range f.down {
		h.restart(s)
	}
	f.down = nil
	if f.masked {
		h.publish(func(t *routing.Table) { t.Masked = nil })
		f.masked = false
	}
	h.clock.Set(0)
}

// check reads every cell's database since from: no packet ID twice, no payment activating two
// packets, no (sender, requestId) naming two packets, every packet in its creation-time
// owner, conservation on every packet, and the client view found as told.
func (h *harness) check(t *testing.T, m *model, from time.Time, where string) {
	t.Helper()
	ctx := context.Background()
	seen := map[int64]string{}
	pays := map[string]int64{}
	wraps := map[[2]string]int64{}
	table := h.current()
	for _, c := range h.cells {
		st := h.cellStore(t, c)
		err := st.ForEachPacket(ctx, from, time.Now().Add(time.Minute), func(p store.Packet) error {
			if prev, dup := seen[p.ID]; dup {
				t.Fatalf("%s: packet %d stored in %s and %s", where, p.ID, prev, c.name)
			}
			seen[p.ID] = c.name
			if p.PaymentTxnID != "" {
				if prev, dup := pays[p.PaymentTxnID]; dup {
					t.Fatalf("%s: payment %q activated %d and %d", where, p.PaymentTxnID, prev, p.ID)
				}
				pays[p.PaymentTxnID] = p.ID
			}
			k := [2]string{p.Sender, p.RequestID}
			if prev, dup := wraps[k]; dup {
				t.Fatalf("%s: wrap %v names %d and %d", where, k, prev, p.ID)
			}
			wraps[k] = p.ID
			if owner, _, err := table.PacketOwner(p.ID); err != nil || owner != c.name {
				t.Fatalf("%s: packet %d stored in %s, owner at creation %q (%v)", where, p.ID, c.name, owner, err)
			}
			rs, err := st.Receipts(ctx, p.ID, 0, 1000)
			if err != nil {
				return nil // its receipt table is hidden this step
			}
			var opened int64
			users := map[string]bool{}
			for _, r := range rs {
				if r.AmountCents < 1 || users[r.User] {
					t.Fatalf("%s: packet %d: receipt %+v", where, p.ID, r)
				}
				users[r.User] = true
				opened += r.AmountCents
			}
			if opened+p.RefundedCents+p.RemainingCents != p.TotalCents {
				t.Fatalf("%s: packet %d: %d opened + %d refunded + %d remaining != %d", where, p.ID, opened, p.RefundedCents, p.RemainingCents, p.TotalCents)
			}
			if v, ok := m.packets[strconv.FormatInt(p.ID, 10)]; ok {
				for u, amt := range v.opened {
					found := false
					for _, r := range rs {
						if r.User == u {
							found = r.AmountCents == amt
						}
					}
					if !found {
						t.Fatalf("%s: packet %d: %s was told %d cents, receipts %v", where, p.ID, u, amt, rs)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: read cell %s: %v", where, c.name, err)
		}
	}
}

func (h *harness) cellStore(t testing.TB, c *cell) *store.Store {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stores == nil {
		h.stores = map[string]*store.Store{}
	}
	if st, ok := h.stores[c.name]; ok {
		return st
	}
	db, err := store.OpenDB(h.db.DSN(""), 8)
	if err != nil {
		t.Fatal(err)
	}
	l := h.layout
	l.DatabasePrefix = c.prefix + "_db_"
	st, err := store.New(db, store.Config{Layout: l, CellSchema: c.prefix + "_cell"})
	if err != nil {
		t.Fatal(err)
	}
	h.stores[c.name] = st
	return st
}

// sweepMargin is how long after a packet's deadline its refund may still be on its way.
const sweepMargin = 2 * time.Second

// unsettled lists packets created since from that are past their deadline plus sweepMargin
// and still hold money (what a lost refund looks like), and the latest deadline of any packet.
func (h *harness) unsettled(from time.Time) (out []string, last time.Time) {
	cutoff := time.Now().Add(-sweepMargin)
	for _, c := range h.cells {
		st := h.cellStore(h.t, c)
		_ = st.ForEachPacket(context.Background(), from, time.Now(), func(p store.Packet) error {
			if p.ExpiresAt.After(last) {
				last = p.ExpiresAt
			}
			if p.SettledAt.IsZero() && p.ExpiresAt.Before(cutoff) {
				out = append(out, fmt.Sprintf("%d in %s (%s, %d left)", p.ID, c.name, p.Status, p.RemainingCents))
			}
			return nil
		})
	}
	return out, last
}
