package dbfailover

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 2, 17, 12, 0, 0, 0, time.UTC)

func state(s string) []GTID {
	l, err := ParseGTIDList(s)
	if err != nil {
		panic(err)
	}
	return l
}

// primary is a writable, semi-sync primary at pos.
func primary(i int, pos string) Instance {
	return Instance{Index: i, Addr: addr(i), ServerID: uint32(i + 1), Reachable: true, SemiSyncPrimary: true,
		CurrentPos: MustPosition(pos), BinlogState: state(pos)}
}

// replica replicates from src, has applied pos and received io.
func replica(i int, src int, pos, io, binlogState string) Instance {
	return Instance{Index: i, Addr: addr(i), ServerID: uint32(i + 1), Reachable: true, ReadOnly: true,
		CurrentPos: MustPosition(pos), BinlogState: state(binlogState),
		Replication: &Replication{SourceAddr: addr(src), IORunning: true, SQLRunning: true, IOPos: MustPosition(io)}}
}

func down(i int, since time.Time) Instance {
	return Instance{Index: i, Addr: addr(i), ServerID: uint32(i + 1), UnreachableSince: since, Err: "connection refused"}
}

func addr(i int) string { return "127.0.0.1:" + string(rune('0'+i)) + "306" }

func term1() History {
	return History{Terms: []Term{{Number: 1, Primary: 0, ServerID: 1, Start: Position{}, At: t0}}}
}

func TestParsePosition(t *testing.T) {
	p, err := ParsePosition(" 0-1-100,\n1-3-7 ")
	if err != nil || p[0].Seq != 100 || p[1].Server != 3 || p.String() != "0-1-100,1-3-7" {
		t.Fatalf("parse: %v %v", p, err)
	}
	for _, bad := range []string{"0-1", "a-1-2", "0-1-2,0-2-3", "0--1-2"} {
		if _, err := ParsePosition(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !MustPosition("0-1-5").Covers(MustPosition("0-2-4")) || MustPosition("0-1-5").Covers(MustPosition("0-1-5,1-1-1")) {
		t.Error("Covers")
	}
	b, _ := json.Marshal(Term{Start: MustPosition("0-1-9")})
	var back Term
	if err := json.Unmarshal(b, &back); err != nil || !back.Start.Equal(MustPosition("0-1-9")) || !strings.Contains(string(b), `"start":"0-1-9"`) {
		t.Errorf("JSON round trip: %s → %+v %v", b, back, err)
	}
}

func TestErrant(t *testing.T) {
	// Term 1: server 1 until 0-1-100; term 2: server 2 from there, open.
	h := History{Terms: []Term{
		{Number: 1, Primary: 0, ServerID: 1, End: MustPosition("0-1-100")},
		{Number: 2, Primary: 1, ServerID: 2, Start: MustPosition("0-1-100")},
	}}
	for _, tc := range []struct {
		name, binlogState string
		errant            bool
	}{
		{"empty", "", false},
		{"old term up to its end", "0-1-100", false},
		{"both terms", "0-1-100,0-2-250", false},
		{"old primary wrote after losing its term", "0-1-103", true},
		{"a server that never was primary", "0-1-90,0-3-91", true},
		{"another domain of a never-primary server", "0-2-120,5-7-1", true},
	} {
		got := Errant(Instance{BinlogState: state(tc.binlogState)}, h)
		if (got != "") != tc.errant {
			t.Errorf("%s: Errant(%s) = %q, want errant=%v", tc.name, tc.binlogState, got, tc.errant)
		}
	}
}

func TestDecide(t *testing.T) {
	pol := Policy{FailoverAfter: 2 * time.Second, DegradeAfter: 15 * time.Second}
	for _, tc := range []struct {
		name      string
		insts     []Instance
		hist      History
		now       time.Time
		reason    string
		ready     bool
		steps     []Op
		inMessage string
	}{
		{name: "no term: bootstrap instance 0", insts: []Instance{primary(0, ""), replica(1, 0, "", "", "")}, hist: History{},
			reason: ReasonBootstrapping, steps: []Op{OpStartTerm}},
		{name: "healthy", hist: term1(), reason: ReasonHealthy, ready: true,
			insts: []Instance{primary(0, "0-1-50"), replica(1, 0, "0-1-49", "0-1-50", "0-1-49"), replica(2, 0, "0-1-50", "0-1-50", "0-1-50")}},
		{name: "fresh start: every instance read-only and unwired", hist: term1(), reason: ReasonConfiguring,
			insts: []Instance{withReadOnly(primary(0, ""), true, false), unwired(replica(1, 0, "", "", ""))},
			steps: []Op{OpSemiSync, OpOpen, OpRepoint}},
		{name: "a second writable instance is fenced before the primary opens", hist: term1(), reason: ReasonConfiguring,
			insts: []Instance{withReadOnly(primary(0, "0-1-5"), true, true), withReadOnly(replica(1, 0, "0-1-5", "0-1-5", "0-1-5"), false, false)},
			steps: []Op{OpFence, OpOpen}},
		{name: "replica pointing at a former primary is repointed", hist: term1(), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-5"), replica(1, 2, "0-1-5", "0-1-5", "0-1-5"), replica(2, 0, "0-1-5", "0-1-5", "0-1-5")},
			steps: []Op{OpRepoint}},
		{name: "errant replica is refused, not repointed", hist: term1(), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-5"), replica(1, 0, "0-2-6", "0-1-5", "0-1-5,0-2-6"), replica(2, 0, "0-1-5", "0-1-5", "0-1-5")},
			steps: []Op{OpRefuse}, inMessage: "errant"},
		{name: "broken replication is refused", hist: term1(), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-5"), broken(replica(1, 0, "0-1-4", "0-1-4", "0-1-4")), replica(2, 0, "0-1-5", "0-1-5", "0-1-5")},
			steps: []Op{OpRefuse}},
		{name: "receiving from the current primary refused (its binlog cannot serve the replica): refused", hist: term1(), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-5"), ioStopped(replica(1, 0, "0-1-4", "0-1-4", "0-1-4"), "Got fatal error 1236 from master"), replica(2, 0, "0-1-5", "0-1-5", "0-1-5")},
			steps: []Op{OpRefuse}},
		// After a failover the other replica's IO thread was stopped with the old primary's
		// connection refused as its last error: it is repointed, not refused until rebuilt.
		{name: "receiving from a former primary failed: repointed, never refused", hist: term1(), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-5"), ioStopped(replica(1, 2, "0-1-5", "0-1-5", "0-1-5"), "error reconnecting to master: Connection refused"), replica(2, 0, "0-1-5", "0-1-5", "0-1-5")},
			steps: []Op{OpRepoint}},
		{name: "replica briefly down: the primary keeps waiting for acks", hist: term1(), now: t0.Add(5 * time.Second), reason: ReasonReplicaMissing, ready: true,
			insts: []Instance{primary(0, "0-1-5"), down(1, t0)}},
		{name: "only replica down for long: semi-sync turned off, said so", hist: term1(), now: t0.Add(20 * time.Second), reason: ReasonNoSemiSync, ready: true,
			insts: []Instance{primary(0, "0-1-5"), down(1, t0)}, steps: []Op{OpSemiSync}, inMessage: "one instance"},
		{name: "only replica refused: semi-sync off at once", hist: refused(term1(), 1), now: t0, reason: ReasonNoSemiSync, ready: true,
			insts: []Instance{primary(0, "0-1-5"), withReadOnly(unwired(replica(1, 0, "0-1-7", "", "0-1-7")), true, false)}, steps: []Op{OpSemiSync}},
		{name: "replica back: semi-sync on again", hist: term1(), now: t0, reason: ReasonConfiguring, ready: true,
			insts: []Instance{withReadOnly(primary(0, "0-1-5"), false, false), replica(1, 0, "0-1-5", "0-1-5", "0-1-5")}, steps: []Op{OpSemiSync}},
		{name: "primary just lost: wait for FailoverAfter", hist: term1(), now: t0.Add(time.Second), reason: ReasonPrimaryLost,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-5", "0-1-5", "0-1-5")}},
		{name: "primary lost: fail over", hist: term1(), now: t0.Add(3 * time.Second), reason: ReasonPrimaryLost,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-5", "0-1-5", "0-1-5"), replica(2, 0, "0-1-4", "0-1-4", "0-1-4")},
			steps: []Op{OpFailover}},
		{name: "primary lost and a replica unreachable: blocked", hist: term1(), now: t0.Add(3 * time.Second), reason: ReasonBlocked,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-5", "0-1-5", "0-1-5"), down(2, t0)}, inMessage: "only copy"},
		{name: "primary lost, the only replica errant: blocked", hist: term1(), now: t0.Add(3 * time.Second), reason: ReasonBlocked,
			insts: []Instance{down(0, t0), replica(1, 0, "0-2-6", "0-1-5", "0-1-5,0-2-6")}, inMessage: "errant"},
		{name: "single instance down", hist: term1(), now: t0.Add(time.Minute), reason: ReasonSingleInstance,
			insts: []Instance{down(0, t0)}},
		// The seam of a primary that committed alone (the CI failure of 2026-12-02: the
		// replica came back, semi-sync went on, the cell said Healthy while the replica still
		// lacked the commits made alone, and the next failover promoted it).
		{name: "alone-committer lost: never fail over, even to a reachable replica", hist: alone(term1()), now: t0.Add(time.Minute), reason: ReasonSoleCopyLost,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-5", "0-1-5", "0-1-5")}, inMessage: "waits for it"},
		{name: "replica back after commits made alone: wait on, not yet caught up", hist: alone(term1()), reason: ReasonCatchingUp, ready: true,
			insts: []Instance{primary(0, "0-1-90"), replica(1, 0, "0-1-40", "0-1-60", "0-1-40")}, inMessage: "could lose"},
		{name: "replica back but the wait still off: turn it on first, keep the mark", hist: alone(term1()), reason: ReasonConfiguring, ready: true,
			insts: []Instance{withReadOnly(primary(0, "0-1-90"), false, false), replica(1, 0, "0-1-90", "0-1-90", "0-1-90")}, steps: []Op{OpSemiSync}},
		{name: "replica received everything the primary holds: mark cleared", hist: alone(term1()), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-90"), replica(1, 0, "0-1-80", "0-1-90", "0-1-80")}, steps: []Op{OpCaughtUp}},
		{name: "an errant replica never counts as caught up", hist: alone(term1()), reason: ReasonNoSemiSync, ready: true,
			insts: []Instance{primary(0, "0-1-90"), replica(1, 0, "0-2-91", "0-1-90", "0-1-90,0-2-91")}, steps: []Op{OpRefuse, OpSemiSync}},
		{name: "a replica of another source never counts as caught up", hist: alone(term1()), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-90"), replica(1, 2, "0-1-90", "0-1-90", "0-1-90"), down(2, t0)}, steps: []Op{OpRepoint}},
		{name: "replica behind and receiving nothing for StallAfter: restarted", hist: term1(), now: t0.Add(20 * time.Second), reason: ReasonConfiguring, ready: true,
			insts: []Instance{primary(0, "0-1-90"), stalledAt(replica(1, 0, "0-1-60", "0-1-60", "0-1-60"), t0)}, steps: []Op{OpRepoint}, inMessage: "stalled"},
		{name: "replica behind but received something since: left alone", hist: term1(), now: t0.Add(20 * time.Second), reason: ReasonHealthy, ready: true,
			insts: []Instance{primary(0, "0-1-90"), replica(1, 0, "0-1-60", "0-1-60", "0-1-60")}},
		{name: "replica behind, unchanged for less than StallAfter: left alone", hist: term1(), now: t0.Add(5 * time.Second), reason: ReasonHealthy, ready: true,
			insts: []Instance{primary(0, "0-1-90"), stalledAt(replica(1, 0, "0-1-60", "0-1-60", "0-1-60"), t0)}},
		{name: "idle replica holding everything is not stalled", hist: term1(), now: t0.Add(time.Hour), reason: ReasonHealthy, ready: true,
			insts: []Instance{primary(0, "0-1-90"), stalledAt(replica(1, 0, "0-1-90", "0-1-90", "0-1-90"), t0)}},
	} {
		now := tc.now
		if now.IsZero() {
			now = t0
		}
		d := Decide(Observation{Instances: tc.insts, History: tc.hist, Now: now}, pol)
		var ops []Op
		for _, s := range d.Steps {
			ops = append(ops, s.Op)
		}
		if d.Reason != tc.reason || d.Ready != tc.ready || !slices.Equal(ops, tc.steps) || !strings.Contains(d.Message, tc.inMessage) {
			t.Errorf("%s:\n got %s ready=%v %v %q\nwant %s ready=%v %v (message with %q)", tc.name, d.Reason, d.Ready, ops, d.Message, tc.reason, tc.ready, tc.steps, tc.inMessage)
		}
	}
}

func TestChooseCandidate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		insts    []Instance
		hist     History
		want     int
		refused  []int
		errorHas string
	}{
		{name: "most advanced by received GTID, not applied", hist: term1(), want: 2,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-9", "0-1-9", "0-1-9"), replica(2, 0, "0-1-7", "0-1-10", "0-1-7")}},
		{name: "tie goes to the lowest index", hist: term1(), want: 1,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-9", "0-1-9", "0-1-9"), replica(2, 0, "0-1-9", "0-1-9", "0-1-9")}},
		{name: "errant replica looks most advanced but is refused", hist: term1(), want: 2, refused: []int{1},
			// A local write on replica 1 took seq 11 under its own server_id.
			insts: []Instance{down(0, t0), replica(1, 0, "0-2-11", "0-1-10", "0-1-10,0-2-11"), replica(2, 0, "0-1-10", "0-1-10", "0-1-10")}},
		{name: "refused replicas are not asked", hist: refused(term1(), 2), want: 1,
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-9", "0-1-9", "0-1-9"), down(2, t0)}},
		{name: "a broken replica is not a candidate", hist: term1(), want: 2,
			insts: []Instance{down(0, t0), broken(replica(1, 0, "0-1-8", "0-1-10", "0-1-8")), replica(2, 0, "0-1-10", "0-1-10", "0-1-10")}},
		{name: "a broken replica received what the candidate lacks: blocked", hist: term1(), want: -1, errorHas: "only copy",
			insts: []Instance{down(0, t0), broken(replica(1, 0, "0-1-8", "0-1-11", "0-1-8")), replica(2, 0, "0-1-10", "0-1-10", "0-1-10")}},
		{name: "an errant replica received what the candidate lacks: blocked", hist: term1(), want: -1, errorHas: "only copy",
			insts: []Instance{down(0, t0), replica(1, 0, "0-2-9", "0-1-11", "0-1-8,0-2-9"), replica(2, 0, "0-1-10", "0-1-10", "0-1-10")}},
		{name: "every replica errant", hist: term1(), want: -1, errorHas: "no replica may take over",
			insts: []Instance{down(0, t0), replica(1, 0, "0-2-11", "0-1-10", "0-1-10,0-2-11")}},
		{name: "an unreachable replica may hold the only ack", hist: term1(), want: -1, errorHas: "unreachable",
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-9", "0-1-9", "0-1-9"), down(2, t0)}},
		{name: "after commits made alone no replica is a candidate", hist: alone(term1()), want: -1, errorHas: "without a replica",
			insts: []Instance{down(0, t0), replica(1, 0, "0-1-9", "0-1-9", "0-1-9"), replica(2, 0, "0-1-9", "0-1-9", "0-1-9")}},
		{name: "second failover: the first term's server is legitimate up to its end", want: 0,
			hist:  History{Terms: []Term{{Number: 1, Primary: 0, ServerID: 1, End: MustPosition("0-1-10")}, {Number: 2, Primary: 1, ServerID: 2, Start: MustPosition("0-1-10")}}},
			insts: []Instance{replica(0, 1, "0-2-30", "0-2-30", "0-1-10,0-2-30"), down(1, t0), replica(2, 1, "0-2-29", "0-2-29", "0-1-10,0-2-29")}},
		{name: "second failover: the deposed primary's lost tail makes it errant", want: 2, refused: []int{0},
			hist:  History{Terms: []Term{{Number: 1, Primary: 0, ServerID: 1, End: MustPosition("0-1-10")}, {Number: 2, Primary: 1, ServerID: 2, Start: MustPosition("0-1-10")}}},
			insts: []Instance{replica(0, 1, "0-1-12", "0-1-12", "0-1-12"), down(1, t0), replica(2, 1, "0-2-29", "0-2-29", "0-1-10,0-2-29")}},
	} {
		c, err := ChooseCandidate(tc.insts, tc.hist)
		if tc.errorHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errorHas) {
				t.Errorf("%s: got %+v, %v; want an error with %q", tc.name, c, err, tc.errorHas)
			}
			continue
		}
		var refused []int
		for i := range c.Refusals {
			refused = append(refused, i)
		}
		slices.Sort(refused)
		if err != nil || c.Index != tc.want || !slices.Equal(refused, tc.refused) {
			t.Errorf("%s: got %d refused %v err %v; want %d refused %v", tc.name, c.Index, refused, err, tc.want, tc.refused)
		}
	}
}

func TestPromoteClosesTheTermAndTheOldPrimaryIsJudgedByIt(t *testing.T) {
	h := term1()
	c := Candidate{Index: 1, Pos: MustPosition("0-1-10"), Refusals: map[int]string{2: "errant"}}
	next := Promote(h, c, 2, t0)
	if len(h.Terms) != 1 || h.Terms[0].End != nil {
		t.Fatalf("Promote changed its input: %+v", h)
	}
	cur, _ := next.Current()
	if len(next.Terms) != 2 || cur.Number != 2 || cur.Primary != 1 || cur.ServerID != 2 || !next.Terms[0].End.Equal(c.Pos) || next.Refused[2] == "" {
		t.Fatalf("after promotion: %+v", next)
	}
	// The old primary comes back: clean if it stopped at the term's end, errant with a tail.
	clean := Instance{Index: 0, BinlogState: state("0-1-10")}
	tail := Instance{Index: 0, BinlogState: state("0-1-12")}
	if Errant(clean, next) != "" || Errant(tail, next) == "" {
		t.Errorf("returning primary: clean %q, with a tail %q", Errant(clean, next), Errant(tail, next))
	}
	// Decide fences and refuses the one with a tail; the clean one is repointed.
	for _, tc := range []struct {
		in   Instance
		want []Op
	}{
		{withReadOnly(unwired(Instance{Index: 0, Addr: addr(0), ServerID: 1, Reachable: true, CurrentPos: MustPosition("0-1-12"), BinlogState: state("0-1-12")}), true, false), []Op{OpRefuse}},
		{withReadOnly(unwired(Instance{Index: 0, Addr: addr(0), ServerID: 1, Reachable: true, CurrentPos: MustPosition("0-1-10"), BinlogState: state("0-1-10")}), true, false), []Op{OpRepoint}},
	} {
		d := Decide(Observation{Instances: []Instance{tc.in, primary(1, "0-2-15"), replica(2, 1, "0-2-15", "0-2-15", "0-1-10,0-2-15")}, History: Promote(h, Candidate{Index: 1, Pos: c.Pos}, 2, t0), Now: t0}, Policy{})
		var ops []Op
		for _, s := range d.Steps {
			ops = append(ops, s.Op)
		}
		if !slices.Equal(ops, tc.want) {
			t.Errorf("returning primary at %s: steps %v, want %v (%s)", tc.in.CurrentPos, ops, tc.want, d.Message)
		}
	}
}

func withReadOnly(in Instance, readOnly, semiSync bool) Instance {
	in.ReadOnly, in.SemiSyncPrimary = readOnly, semiSync
	return in
}

func stalledAt(in Instance, since time.Time) Instance { in.StalledSince = since; return in }

func unwired(in Instance) Instance { in.Replication = nil; return in }

func broken(in Instance) Instance {
	r := *in.Replication
	r.SQLRunning, r.SQLError = false, "Error 1062: duplicate entry"
	in.Replication = &r
	return in
}

func ioStopped(in Instance, why string) Instance {
	r := *in.Replication
	r.IORunning, r.IOError = false, why
	in.Replication = &r
	return in
}

// alone is h after its primary committed without waiting for a replica.
func alone(h History) History {
	h = h.Clone()
	h.SemiSyncOff = t0.Add(-time.Minute)
	return h
}

func refused(h History, i int) History {
	h = h.Clone()
	h.Refused = map[int]string{i: "errant"}
	return h
}
