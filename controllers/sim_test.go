package controllers

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/gateway"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers/plan"
)

var (
	simSeeds = flag.Int("sim.seeds", 500, "seeds of TestControlPlaneSimulation")
	simSeed  = flag.Int64("sim.seed", -1, "run TestControlPlaneSimulation for this seed only")
)

// simServer is one cell server as the control plane sees it: its clock skew, when each
// published table version became visible in its mounted file, and what it holds.
type simServer struct {
	name    string
	cell    string
	skew    time.Duration
	held    int       // index into published versions (-1: none)
	current time.Time // its clock's last second at which it held the announced epoch
	visible []time.Time
}

type simPacket struct {
	slot    int
	created time.Time // the ID's second
	cell    string
	settles time.Time // true time at which it is settled
}

// TestControlPlaneSimulation drives the operator's routing decisions (decideRouting: the pure
// planner, the hand-over gate, pruning) against modelled servers: random scale changes with
// quick reversals, routing ConfigMap loss, servers loading tables late (some minutes late),
// cells whose database is down, and clock skew between the operator and every server. After
// every second it checks, with each server's own refusal rule (routing.StaleFor):
//   - no (slot, ID second) has two issuing cells;
//   - every packet created so far is routed by the operator's table to the cell that issued
//     it, until it settles (so no epoch an unsettled packet needs was pruned);
//   - a gateway holding any published table (late or not) stays ready while any cell it
//     names can serve (its database up and a server of it holding a table).
//
// Run more seeds with -sim.seeds=N, one with -sim.seed=N.
func TestControlPlaneSimulation(t *testing.T) {
	seeds := make([]int64, 0, *simSeeds)
	if *simSeed >= 0 {
		seeds = append(seeds, *simSeed)
	} else {
		for s := range *simSeeds {
			seeds = append(seeds, int64(s))
		}
	}
	for _, seed := range seeds {
		if err := simulate(seed); err != nil {
			t.Fatalf("seed %d (rerun with -run TestControlPlaneSimulation -sim.seed=%d): %v", seed, seed, err)
		}
	}
}

func simulate(seed int64) error {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x11))
	const slots = 40
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "sim"},
		Spec: rpv1.RedPacketSetSpec{
			SlotCount:      slots,
			RebalanceDelay: &rpv1.Duration{Duration: []time.Duration{-time.Minute, 0, time.Minute, 2 * time.Minute, 5 * time.Minute}[rng.IntN(5)]},
			Limits:         rpv1.PacketLimits{Expiry: &rpv1.Duration{Duration: time.Duration(5+rng.IntN(20)) * time.Minute}},
		},
	}
	expiry := set.Spec.Limits.Expiry.Duration
	opSkew := time.Duration(rng.IntN(21)-10) * time.Second
	now := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC) // true time
	cellName := func(i int) string { return plan.CellName("sim", i) }
	cellsOf := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = cellName(i)
		}
		return out
	}
	n := 1 + rng.IntN(4)

	var versions []*routing.Table // every table the operator published, in order
	var status *routing.Table     // the set's status copy (written before the ConfigMap)
	announced := map[string]routing.Announcement{}
	down := map[string]bool{} // a cell whose database is down: unreadable, and its servers fence
	var servers []*simServer
	addServers := func(cell string) {
		for range 1 + rng.IntN(3) {
			s := &simServer{name: fmt.Sprintf("%s-srv-%d", cell, len(servers)), cell: cell, skew: time.Duration(rng.IntN(11)-5) * time.Second, held: -1}
			servers = append(servers, s)
		}
	}
	lag := func() time.Duration {
		if rng.IntN(8) == 0 {
			return time.Duration(120+rng.IntN(300)) * time.Second // stuck kubelet
		}
		return time.Duration(rng.IntN(70)) * time.Second
	}
	publish := func(t *routing.Table) {
		versions = append(versions, t)
		for _, s := range servers {
			s.visible = append(s.visible, now.Add(lag()))
		}
	}
	var packets []simPacket
	hasCell := map[string]bool{}

	for step := 0; step < 120; step++ {
		// The world changes.
		switch r := rng.IntN(20); {
		case r < 3:
			n = max(1, min(8, n+rng.IntN(5)-2)) // scale, often reversing a pending change
		case r == 3 && status != nil:
			// ConfigMap lost: the operator rebuilds from status (it is what the ConfigMap held).
			versions = append(versions, status)
			for _, s := range servers {
				s.visible = append(s.visible, now.Add(lag()))
			}
		case r == 4:
			c := cellName(rng.IntN(max(1, n)))
			down[c] = !down[c]
		}

		// The operator reconciles, at its own clock.
		opNow := now.Add(opSkew)
		var published *routing.Table
		if len(versions) > 0 {
			published = versions[len(versions)-1]
		}
		var readers []plan.CellReaders
		for _, c := range sortedCells(hasCell) {
			cr := plan.CellReaders{Cell: c, Servers: map[string]int64{}}
			if down[c] {
				cr.Err = "database down"
			}
			for _, s := range servers {
				if s.cell == c && s.held >= 0 && !down[c] {
					cr.Servers[s.name] = versions[s.held].Latest().Number
				} else if s.cell == c && !down[c] {
					cr.Servers[s.name] = 0
				}
			}
			readers = append(readers, cr)
		}
		minNumber := int64(0)
		if status != nil {
			minNumber = status.Latest().Number
		}
		settled := func(old, next *routing.Epoch) bool {
			for _, p := range packets {
				if p.settles.After(now) && p.created.Before(next.EffectiveTime) && !p.created.Before(old.EffectiveTime) {
					return false
				}
			}
			return true
		}
		d := decideRouting(set, routingInput{published: published, cells: cellsOf(n), now: opNow, settled: settled, minNumber: minNumber, readers: readers})
		// Announced to every reachable cell before publishing, and again to a cell that
		// missed it once its database is back.
		if l := d.Table.Latest(); true {
			for c := range hasCell {
				if !down[c] && announced[c].Number < l.Number {
					announced[c] = routing.Announcement{Number: l.Number, EffectiveTime: l.EffectiveTime}
				}
			}
		}
		if published == nil || !sameTable(published, d.Table) {
			status = d.Table
			publish(d.Table)
		}
		for _, c := range d.Table.AllCells() {
			if !hasCell[c] {
				hasCell[c] = true
				addServers(c)
				// A new server mounts the current ConfigMap at start.
				for _, s := range servers {
					if s.cell == c {
						s.visible = make([]time.Time, len(versions))
						for i := range s.visible {
							s.visible[i] = now
						}
					}
				}
			}
		}

		// Time passes, second by second; every server loads what became visible to it, then
		// issues (or refuses) at its own clock.
		dt := time.Duration(1+rng.IntN(20)) * time.Second
		for end := now.Add(dt); now.Before(end); now = now.Add(time.Second) {
			claims := map[[2]int64]string{}
			for _, s := range servers {
				for i := len(s.visible) - 1; i > s.held; i-- {
					if !s.visible[i].After(now) {
						s.held = i
						break
					}
				}
				if s.held < 0 || down[s.cell] {
					continue // nothing loaded, or its database is down: the lease fences it
				}
				held := versions[s.held]
				sec := now.Add(s.skew).Truncate(time.Second)
				if announced[s.cell].Number <= held.Latest().Number {
					s.current = sec
				}
				if routing.StaleFor(held, announced[s.cell], s.current, sec) != nil {
					continue
				}
				e, _ := held.EpochAt(sec)
				for _, slot := range e.Slots(s.cell) {
					k := [2]int64{int64(slot), sec.Unix()}
					if other, ok := claims[k]; ok && other != s.cell {
						return fmt.Errorf("step %d: slot %d at second %s issued by %s and %s", step, slot, sec.Format(time.RFC3339), other, s.cell)
					}
					claims[k] = s.cell
				}
				if rng.IntN(50) == 0 {
					if owned := e.Slots(s.cell); len(owned) > 0 {
						slot := owned[rng.IntN(len(owned))]
						packets = append(packets, simPacket{slot: slot, created: sec, cell: s.cell, settles: now.Add(time.Duration(rng.Int64N(int64(2 * expiry))))})
					}
				}
			}
		}
		// Gateways load tables late too; each must stay ready while any cell can serve.
		for g := 0; g < 2; g++ {
			held := versions[rng.IntN(len(versions))]
			serving := func(cell string) int {
				n := 0
				for _, s := range servers {
					if s.cell == cell && s.held >= 0 && !down[cell] {
						n++
					}
				}
				return n
			}
			canServe := false
			for _, c := range held.AllCells() {
				canServe = canServe || serving(c) > 0
			}
			if err := gateway.ReadyFor(held, serving); canServe && err != nil {
				return fmt.Errorf("step %d: a gateway holding epoch %d is not ready while a cell can serve: %v", step, held.Latest().Number, err)
			}
		}
		// Every packet still unsettled is routed by the operator's table (what every reader
		// converges to) to the cell that created it.
		truth := versions[len(versions)-1]
		live := packets[:0]
		for _, p := range packets {
			if !p.settles.After(now) {
				continue
			}
			owner, _, err := truth.OwnerAt(p.slot, p.created)
			if err != nil || owner != p.cell {
				return fmt.Errorf("step %d: packet in slot %d created %s by %s is routed to %q (%v)", step, p.slot, p.created.Format(time.RFC3339), p.cell, owner, err)
			}
			live = append(live, p)
		}
		packets = live
	}
	return nil
}

func sortedCells(m map[string]bool) []string {
	var out []string
	for c := range m {
		out = append(out, c)
	}
	sortStrings(out)
	return out
}

func sameTable(a, b *routing.Table) bool {
	if len(a.Epochs) != len(b.Epochs) {
		return false
	}
	for i := range a.Epochs {
		if a.Epochs[i].Number != b.Epochs[i].Number {
			return false
		}
	}
	return true
}

func sortStrings(s []string) { slices.Sort(s) }
