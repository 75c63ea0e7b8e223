// Package dbfailover keeps one primary per cell database: it decides, from what every MariaDB
// instance of a cell reports, whether the primary is lost, which replica takes over, which
// instances must be fenced or refused, and how replication is wired; and it carries those
// decisions out over SQL. The local SET's supervisor and (later) the operator both call
// Manager.Reconcile, so there is one failover logic, not a copy per runtime.
//
// Gather → decide → act: Observe* turn SQL into Instance values, Decide and ChooseCandidate are
// pure functions of those values and the cell's History (table-tested), and Manager runs the
// steps. History — the primary terms — is durable and owned by the caller (state.json locally,
// the RedPacketCell status on Kubernetes): it is what lets a replica's GTIDs be judged when the
// primary that wrote them is gone.
//
// The guarantee rests on three settings the instances run with (docs/reliability.md):
// semi-synchronous replication with the AFTER_SYNC wait point, so a commit is acknowledged to
// a cell server only once one replica has it in its relay log; a semi-sync timeout that never
// fires while a replica is healthy; and read_only=ON at every start, so an instance writes only
// after this package has opened it. The cell servers connect as a user without READ_ONLY ADMIN,
// so read_only really refuses their writes.
//
// This package must never write cell data and never open an instance as primary while another
// instance it can reach is writable.
package dbfailover

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Instance is one observation of one database instance of a cell.
type Instance struct {
	Index    int
	Addr     string // host:port the other instances replicate from
	ServerID uint32 // server_id; unique within the cell
	// Reachable: the observation succeeded. Every field below is meaningful only then.
	Reachable bool
	// UnreachableSince is when the gatherer first failed to reach it (zero while reachable).
	UnreachableSince time.Time
	Err              string // why it is unreachable
	// StalledSince is when what it holds (Received) last changed, as the gatherer saw it
	// across observations; zero when it changed in this one or the gatherer cannot tell.
	StalledSince time.Time

	ReadOnly        bool // @@read_only
	SemiSyncPrimary bool // @@rpl_semi_sync_master_enabled
	// CurrentPos is gtid_current_pos: the last transaction applied or written, per domain.
	CurrentPos Position
	// BinlogState is gtid_binlog_state: per (domain, server_id) the last GTID in the binary
	// log. Replicas run log_slave_updates, so it holds what they applied too.
	BinlogState []GTID
	// Replication is SHOW SLAVE STATUS; nil when no replication is configured.
	Replication *Replication
}

// Replication is a replica's view of its source.
type Replication struct {
	SourceAddr string
	IORunning  bool // Slave_IO_Running is anything but No: Yes, Connecting, Preparing
	SQLRunning bool
	// IOPos is Gtid_IO_Pos: the last GTID received into the relay log (acknowledged to a
	// semi-sync primary), which the SQL thread may not have applied yet.
	IOPos Position
	// SQLError is Last_SQL_Error: the replica could not apply what it received (a data
	// divergence). IOError is Last_IO_Error: receiving failed, which may only mean its source
	// went away (a failover's old primary) or, from the current primary, that the primary's
	// binlog cannot serve it (divergence).
	SQLError, IOError string
}

// Received is what the instance holds, applied or still in its relay log.
func (in Instance) Received() Position {
	p := in.CurrentPos.Clone()
	if in.Replication != nil {
		for d, g := range in.Replication.IOPos {
			if g.Seq > p[d].Seq {
				p[d] = g
			}
		}
	}
	return p
}

// History is a cell's durable record of its primary terms and of instances refused for
// rebuilding. The caller stores it (JSON) and hands it back unchanged between calls.
type History struct {
	Terms []Term `json:"terms,omitempty"`
	// Refused are instances that must not serve or replicate until rebuilt: index → why.
	Refused map[int]string `json:"refused,omitempty"`
	// SemiSyncOff is when the logic turned off the primary's wait for a replica because no
	// replica could replicate: from then on an acknowledged commit may be on the primary
	// alone, so no failover may happen. It is recorded before the wait goes off and cleared
	// only once a replica holds everything the primary held after the wait was back on
	// (zero in the normal case).
	SemiSyncOff time.Time `json:"semiSyncOff,omitzero"`
}

// Term is one primary's tenure. Every transaction a term's primary writes carries its server_id;
// once the term ends, only GTIDs of that server up to End are legitimate.
type Term struct {
	Number   int       `json:"number"`
	Primary  int       `json:"primary"`
	ServerID uint32    `json:"serverId"`
	Start    Position  `json:"start"`
	End      Position  `json:"end,omitempty"` // nil while the term is open
	At       time.Time `json:"at"`
}

// Current is the open term; ok is false before the cell has one.
func (h History) Current() (Term, bool) {
	if len(h.Terms) == 0 {
		return Term{}, false
	}
	return h.Terms[len(h.Terms)-1], true
}

// Clone deep-copies h, so a decision never aliases the caller's record.
func (h History) Clone() History {
	out := History{Terms: slices.Clone(h.Terms), SemiSyncOff: h.SemiSyncOff}
	if h.Refused != nil {
		out.Refused = make(map[int]string, len(h.Refused))
		for k, v := range h.Refused {
			out.Refused[k] = v
		}
	}
	return out
}

// Errant reports why an instance holds transactions the cell's history cannot account for, or
// "" when it holds none. The rule, per entry (domain d, server s, seq n) of its
// gtid_binlog_state (the last GTID of each server in each domain):
//
//   - s must be the server_id of some term's primary: a GTID of any other server was written
//     on a replica directly, never by a primary;
//   - if s's latest term has ended, n must not exceed that term's End in domain d: a GTID past
//     the end was committed by a primary after it lost its term (a deposed primary that crash
//     recovery brought back with transactions no replica received — never acknowledged to a
//     client, but not on the new primary's timeline either).
//
// The open term's server may have any seq. Writes made with sql_log_bin=0 leave no GTID and
// cannot be seen; nothing in the project makes them.
func Errant(in Instance, h History) string {
	latest := map[uint32]Term{}
	for _, t := range h.Terms {
		latest[t.ServerID] = t
	}
	var why []string
	for _, g := range in.BinlogState {
		t, ok := latest[g.Server]
		switch {
		case !ok:
			why = append(why, fmt.Sprintf("GTID %s from server %d, which never was this cell's primary", g, g.Server))
		case t.End != nil && g.Seq > t.End[g.Domain].Seq:
			why = append(why, fmt.Sprintf("GTID %s after the end of server %d's term %d (ended at %s)", g, g.Server, t.Number, t.End))
		}
	}
	return strings.Join(why, "; ")
}

// Policy tunes the timing of decisions.
type Policy struct {
	// FailoverAfter is how long the primary must be unreachable before a failover starts;
	// a blip shorter than this costs nothing. Default 2 s.
	FailoverAfter time.Duration
	// DegradeAfter is how long no replica may be able to replicate (every other instance
	// refused or unreachable this long) before the primary stops waiting for one. Default 15 s.
	DegradeAfter time.Duration
	// StallAfter is how long a replica may stay behind its primary without receiving anything
	// before its replication is restarted. Default 15 s.
	StallAfter time.Duration
}

func (p Policy) withDefaults() Policy {
	if p.FailoverAfter <= 0 {
		p.FailoverAfter = 2 * time.Second
	}
	if p.DegradeAfter <= 0 {
		p.DegradeAfter = 15 * time.Second
	}
	if p.StallAfter <= 0 {
		p.StallAfter = 15 * time.Second
	}
	return p
}

// Reasons name the cell's database state (the DatabaseReady condition's reason).
const (
	ReasonBootstrapping  = "Bootstrapping"      // no primary term yet: the first primary is being opened
	ReasonHealthy        = "Healthy"            // primary writable, every replica replicating with semi-sync
	ReasonConfiguring    = "Configuring"        // primary reachable; steps are being applied
	ReasonReplicaMissing = "ReplicaMissing"     // primary writable, a replica down or refused
	ReasonNoSemiSync     = "SemiSyncOff"        // primary writable but no replica can replicate: commits are on one instance only
	ReasonPrimaryLost    = "PrimaryLost"        // primary unreachable; failover pending or running
	ReasonBlocked        = "FailoverBlocked"    // primary unreachable and no replica may take over
	ReasonSingleInstance = "SingleInstanceDown" // one instance only, down: wait for it
	ReasonCatchingUp     = "CatchingUp"         // semi-sync back on; a replica still lacks commits the primary made alone
	ReasonSoleCopyLost   = "SoleCopyLost"       // the primary made commits alone and is unreachable: wait for it, never fail over
)

// Op is one step's kind.
type Op string

const (
	OpStartTerm Op = "StartTerm" // record term 1 with Instance as primary (bootstrap)
	OpRefuse    Op = "Refuse"    // record Instance as refused (needs a rebuild) and fence it
	OpFence     Op = "Fence"     // read_only=1, semi-sync primary off
	OpSemiSync  Op = "SemiSync"  // set the primary's semi-sync wait to On
	OpOpen      Op = "Open"      // drop replication settings, read_only=0
	OpRepoint   Op = "Repoint"   // replicate from the primary with MASTER_USE_GTID=slave_pos (Reason "stalled": restart a stalled one)
	OpFailover  Op = "Failover"  // drain the replicas, choose, promote (Manager.failover)
	OpCaughtUp  Op = "CaughtUp"  // clear History.SemiSyncOff: a replica holds all the primary did alone
)

// Step is one thing to do, in order.
type Step struct {
	Op       Op
	Instance int
	On       bool   // OpSemiSync
	Reason   string // OpRefuse, OpFence, OpRepoint of a stalled replica
}

func (s Step) String() string {
	switch s.Op {
	case OpSemiSync:
		return fmt.Sprintf("%s(%d, on=%v)", s.Op, s.Instance, s.On)
	case OpRefuse, OpFence:
		return fmt.Sprintf("%s(%d: %s)", s.Op, s.Instance, s.Reason)
	case OpRepoint:
		if s.Reason != "" {
			return fmt.Sprintf("%s(%d: %s)", s.Op, s.Instance, s.Reason)
		}
	}
	return fmt.Sprintf("%s(%d)", s.Op, s.Instance)
}

// Decision is what to do now.
type Decision struct {
	Reason  string
	Message string
	Primary int  // the term's primary (-1 before bootstrap)
	Ready   bool // the primary is reachable and writable now: DatabaseReady is True
	Steps   []Step
}

// Observation is one gathering: every instance of the cell, in index order, and the History.
type Observation struct {
	Instances []Instance
	History   History
	Now       time.Time
}

// Decide classifies the cell and lists the steps that bring it to one writable primary with
// every other instance replicating from it or refused. It is pure.
func Decide(o Observation, pol Policy) Decision {
	pol = pol.withDefaults()
	t, ok := o.History.Current()
	if !ok {
		return Decision{Reason: ReasonBootstrapping, Primary: -1, Message: "no primary term yet: instance 0 becomes the first primary",
			Steps: []Step{{Op: OpStartTerm, Instance: 0}}}
	}
	if t.Primary < 0 || t.Primary >= len(o.Instances) {
		return Decision{Reason: ReasonBlocked, Primary: t.Primary, Message: fmt.Sprintf("term %d names instance %d, the cell has %d", t.Number, t.Primary, len(o.Instances))}
	}
	p := o.Instances[t.Primary]
	if !p.Reachable {
		return decideLost(o, t, p, pol)
	}

	d := Decision{Primary: t.Primary}
	var fences, repoints []Step
	var missing []string
	canReplicate := 0
	for _, in := range o.Instances {
		if in.Index == t.Primary {
			continue
		}
		if why, refused := o.History.Refused[in.Index]; refused {
			missing = append(missing, fmt.Sprintf("instance %d refused (%s)", in.Index, why))
			if in.Reachable && (!in.ReadOnly || in.SemiSyncPrimary) {
				fences = append(fences, Step{Op: OpFence, Instance: in.Index, Reason: "refused instance is writable"})
			}
			continue
		}
		if !in.Reachable {
			missing = append(missing, fmt.Sprintf("instance %d unreachable (%s)", in.Index, in.Err))
			if o.Now.Sub(in.UnreachableSince) < pol.DegradeAfter {
				canReplicate++
			}
			continue
		}
		if why := Errant(in, o.History); why != "" {
			fences = append(fences, Step{Op: OpRefuse, Instance: in.Index, Reason: "errant transactions: " + why})
			missing = append(missing, fmt.Sprintf("instance %d errant", in.Index))
			continue
		}
		if why := brokenReplication(in.Replication, p.Addr); why != "" {
			fences = append(fences, Step{Op: OpRefuse, Instance: in.Index, Reason: "replication stopped: " + why})
			missing = append(missing, fmt.Sprintf("instance %d replication broken", in.Index))
			continue
		}
		canReplicate++
		if !in.ReadOnly || in.SemiSyncPrimary {
			// A second writable instance is fenced before anything else happens.
			fences = append(fences, Step{Op: OpFence, Instance: in.Index, Reason: "not the primary"})
		}
		if r := in.Replication; r == nil || r.SourceAddr != p.Addr || !r.IORunning || !r.SQLRunning {
			repoints = append(repoints, Step{Op: OpRepoint, Instance: in.Index})
			missing = append(missing, fmt.Sprintf("instance %d not replicating from the primary yet", in.Index))
		} else if stalled(in, p, o.Now, pol) {
			// Connected but receiving nothing while behind: the primary's commits wait for an
			// acknowledgement that never comes. Seen on MariaDB 10.11 after a replica was
			// repointed while its IO thread was still starting: the primary's dump thread for
			// it hung, and every reconnect got nothing.
			why := fmt.Sprintf("stalled at %s for %s while the primary is at %s", in.Received(), o.Now.Sub(in.StalledSince).Round(time.Second), p.CurrentPos)
			repoints = append(repoints, Step{Op: OpRepoint, Instance: in.Index, Reason: why})
			missing = append(missing, fmt.Sprintf("instance %d %s", in.Index, why))
		}
	}
	d.Steps = append(d.Steps, fences...)
	// The wait is on before the primary takes writes, so no write commits unreplicated.
	wantSemiSync := canReplicate > 0
	if p.SemiSyncPrimary != wantSemiSync {
		d.Steps = append(d.Steps, Step{Op: OpSemiSync, Instance: t.Primary, On: wantSemiSync})
	}
	if p.ReadOnly || p.Replication != nil {
		d.Steps = append(d.Steps, Step{Op: OpOpen, Instance: t.Primary})
	}
	d.Steps = append(d.Steps, repoints...)
	caughtUp := -1
	if !o.History.SemiSyncOff.IsZero() && wantSemiSync && p.SemiSyncPrimary && len(d.Steps) == 0 {
		caughtUp = caughtUpReplica(o, p)
		if caughtUp >= 0 {
			d.Steps = append(d.Steps, Step{Op: OpCaughtUp, Instance: caughtUp})
		}
	}
	d.Ready = !p.ReadOnly && p.Replication == nil
	switch {
	case !wantSemiSync && len(o.Instances) > 1:
		d.Reason = ReasonNoSemiSync
		d.Message = fmt.Sprintf("primary %d has no replica that can replicate (%s): commits are on one instance until one is rebuilt", t.Primary, strings.Join(missing, "; "))
	case !o.History.SemiSyncOff.IsZero() && caughtUp < 0 && len(d.Steps) == 0:
		d.Reason = ReasonCatchingUp
		d.Message = fmt.Sprintf("primary %d waits for a replica again, but committed without one from %s; no replica holds all of it yet (primary at %s), so a failover now could lose acknowledged commits",
			t.Primary, o.History.SemiSyncOff.Format(time.RFC3339), p.CurrentPos)
	case len(d.Steps) > 0:
		d.Reason = ReasonConfiguring
		d.Message = fmt.Sprintf("primary %d: %s", t.Primary, stepList(d.Steps))
	case len(missing) > 0:
		d.Reason = ReasonReplicaMissing
		d.Message = fmt.Sprintf("primary %d writable; %s", t.Primary, strings.Join(missing, "; "))
	default:
		d.Reason = ReasonHealthy
		d.Message = fmt.Sprintf("primary %d writable, %d replicas replicating semi-synchronously", t.Primary, len(o.Instances)-1)
	}
	return d
}

// stalled: in has received nothing for StallAfter while it lacks some of what p holds.
// brokenReplication says why a replica's replication cannot be resumed by repointing it ("" when
// it can): its SQL thread stopped on an error, or its IO thread stopped on an error from the
// current primary. An IO error from another source — the old primary a failover left behind,
// refusing connections — is no fault of the replica: it is repointed, never refused.
func brokenReplication(r *Replication, primary string) string {
	switch {
	case r == nil:
		return ""
	case !r.SQLRunning && r.SQLError != "":
		return r.SQLError
	case !r.IORunning && r.IOError != "" && r.SourceAddr == primary:
		return r.IOError
	}
	return ""
}

func stalled(in, p Instance, now time.Time, pol Policy) bool {
	return !in.StalledSince.IsZero() && now.Sub(in.StalledSince) >= pol.StallAfter && !in.Received().Covers(p.CurrentPos)
}

// caughtUpReplica is a replica replicating from p, neither refused nor errant, that holds
// everything p had committed when p was observed, or -1. p was observed with its semi-sync
// wait on, so every commit p acknowledged without a replica is in what it reported; every
// later one waited for a replica's acknowledgement, and a replica acknowledges an event only
// once it has received every earlier one.
func caughtUpReplica(o Observation, p Instance) int {
	for _, in := range o.Instances {
		if in.Index == p.Index || !in.Reachable {
			continue
		}
		if _, refused := o.History.Refused[in.Index]; refused {
			continue
		}
		r := in.Replication
		if r == nil || r.SourceAddr != p.Addr || !r.IORunning || Errant(in, o.History) != "" {
			continue
		}
		if in.Received().Covers(p.CurrentPos) {
			return in.Index
		}
	}
	return -1
}

func decideLost(o Observation, t Term, p Instance, pol Policy) Decision {
	d := Decision{Primary: t.Primary, Reason: ReasonPrimaryLost}
	if len(o.Instances) == 1 {
		d.Reason = ReasonSingleInstance
		d.Message = fmt.Sprintf("the only instance is unreachable (%s): nothing to fail over to", p.Err)
		return d
	}
	if !o.History.SemiSyncOff.IsZero() {
		d.Reason = ReasonSoleCopyLost
		d.Message = fmt.Sprintf("primary %d is unreachable (%s) and committed without a replica's acknowledgement from %s: only it is known to hold every acknowledged commit, so the cell waits for it to return",
			t.Primary, p.Err, o.History.SemiSyncOff.Format(time.RFC3339))
		return d
	}
	down := o.Now.Sub(p.UnreachableSince)
	if down < pol.FailoverAfter {
		d.Message = fmt.Sprintf("primary %d unreachable for %s (%s); failover after %s", t.Primary, down.Round(time.Millisecond), p.Err, pol.FailoverAfter)
		return d
	}
	if _, err := ChooseCandidate(o.Instances, o.History); err != nil {
		d.Reason = ReasonBlocked
		d.Message = fmt.Sprintf("primary %d unreachable (%s) and no failover possible: %v", t.Primary, p.Err, err)
		return d
	}
	d.Message = fmt.Sprintf("primary %d unreachable for %s (%s): failing over", t.Primary, down.Round(time.Millisecond), p.Err)
	d.Steps = []Step{{Op: OpFailover, Instance: t.Primary}}
	return d
}

// Candidate is the replica chosen to become primary.
type Candidate struct {
	Index int
	// Pos is everything it holds (applied or received); it must apply up to Pos before it
	// opens, and the old term ends there.
	Pos Position
	// Refusals are replicas found errant on the way, to record as refused.
	Refusals map[int]string
}

// ChooseCandidate picks the replica that takes over from the lost primary of the current
// term: the one holding the most transactions, among replicas that are neither refused nor
// errant. It refuses to choose when
//
//   - the primary committed without waiting for a replica (History.SemiSyncOff) and no
//     replica has been seen holding all of it since: only the lost primary is known to hold
//     every acknowledged commit;
//   - a replica that is not refused is unreachable: MariaDB's semi-sync primary waits for one
//     replica's acknowledgement, so an acknowledged commit may be held by that replica alone;
//   - no replica is left, or no single replica holds everything every other one holds;
//   - a replica that cannot take over (errant, or its SQL thread stopped by an error)
//     received from the primary something the chosen one lacks: it may have been the replica
//     that acknowledged it.
func ChooseCandidate(insts []Instance, h History) (Candidate, error) {
	t, ok := h.Current()
	if !ok {
		return Candidate{}, fmt.Errorf("no primary term")
	}
	if !h.SemiSyncOff.IsZero() {
		return Candidate{}, fmt.Errorf("primary %d committed without a replica's acknowledgement from %s: no replica is known to hold every acknowledged commit",
			t.Primary, h.SemiSyncOff.Format(time.RFC3339))
	}
	c := Candidate{Index: -1, Refusals: map[int]string{}}
	var eligible, excluded []Instance
	for _, in := range insts {
		if in.Index == t.Primary {
			continue
		}
		if _, refused := h.Refused[in.Index]; refused {
			continue
		}
		if !in.Reachable {
			return Candidate{}, fmt.Errorf("replica %d is unreachable (%s): it may hold the only copy of an acknowledged commit", in.Index, in.Err)
		}
		if why := Errant(in, h); why != "" {
			c.Refusals[in.Index] = "errant transactions: " + why
			excluded = append(excluded, in)
			continue
		}
		if r := in.Replication; r != nil && !r.SQLRunning && r.SQLError != "" {
			// It cannot apply what it received: promoting it would discard its relay log.
			excluded = append(excluded, in)
			continue
		}
		eligible = append(eligible, in)
	}
	if len(eligible) == 0 {
		var why []string
		for i, r := range c.Refusals {
			why = append(why, fmt.Sprintf("replica %d: %s", i, r))
		}
		sort.Strings(why)
		if len(why) == 0 {
			why = []string{"no replica"}
		}
		return Candidate{}, fmt.Errorf("no replica may take over: %s", strings.Join(why, "; "))
	}
	best := eligible[0]
	for _, in := range eligible[1:] {
		if in.Received().Covers(best.Received()) && !best.Received().Covers(in.Received()) {
			best = in
		}
	}
	for _, in := range eligible {
		if !best.Received().Covers(in.Received()) {
			return Candidate{}, fmt.Errorf("replicas diverged: %d holds %s, %d holds %s; neither has everything", best.Index, best.Received(), in.Index, in.Received())
		}
	}
	// A replica left out (errant, or its SQL thread broken) may still be the one that
	// acknowledged the last commits: what it received from the primary must be on the
	// candidate too.
	for _, in := range excluded {
		if r := in.Replication; r != nil && !best.Received().Covers(r.IOPos) {
			return Candidate{}, fmt.Errorf("replica %d, which cannot take over, received %s from the primary and replica %d holds only %s: it may hold the only copy of an acknowledged commit",
				in.Index, r.IOPos, best.Index, best.Received())
		}
	}
	c.Index, c.Pos = best.Index, best.Received()
	return c, nil
}

// Promote is the History after cand takes over at now: the current term ends at cand.Pos,
// a new one opens with cand as primary, and the refusals found on the way are recorded.
func Promote(h History, cand Candidate, serverID uint32, now time.Time) History {
	out := h.Clone()
	n := len(out.Terms)
	number := 1
	if n > 0 {
		out.Terms[n-1].End = cand.Pos.Clone()
		number = out.Terms[n-1].Number + 1
	}
	out.Terms = append(out.Terms, Term{Number: number, Primary: cand.Index, ServerID: serverID, Start: cand.Pos.Clone(), At: now.UTC()})
	for i, why := range cand.Refusals {
		if out.Refused == nil {
			out.Refused = map[int]string{}
		}
		out.Refused[i] = why
	}
	return out
}

func stepList(steps []Step) string {
	parts := make([]string, len(steps))
	for i, s := range steps {
		parts[i] = s.String()
	}
	return strings.Join(parts, ", ")
}
