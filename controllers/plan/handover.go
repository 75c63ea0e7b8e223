package plan

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// CellReaders is what one cell's control schema says about the routing table its ID-issuing
// servers hold.
type CellReaders struct {
	Cell string
	// Err is why the cell's control schema could not be read ("" when it was).
	Err string
	// Servers maps every server holding a live worker lease (so able to issue IDs) to the
	// newest epoch number of the table it reported holding (0: none reported).
	Servers map[string]int64
}

// HandoverInput is what DecideHandover looks at.
type HandoverInput struct {
	Latest *routing.Epoch // the table's newest epoch
	Now    time.Time
	Delay  time.Duration // spec.rebalanceDelay (clamped by the caller or not: ClampDelay runs here)
	Cells  []CellReaders
}

// Handover reasons, also used as the Rebalancing condition's reasons.
const (
	HandoverNone       = ""                   // the newest epoch is in force: nothing to hand over
	HandoverComplete   = "EpochPending"       // every issuing server holds the pending epoch
	HandoverWaiting    = "ReadersBehind"      // some servers lack it; there is still time
	HandoverPushedBack = "EpochPushedBack"    // re-planned later because servers lack it
	HandoverIncomplete = "HandoverIncomplete" // takes effect although servers may lack it
)

// HandoverDecision says whether the pending epoch may take effect as published.
type HandoverDecision struct {
	Reason   string
	PushBack bool     // re-plan the pending epoch later (NextTable with PushBack)
	Behind   []string // "cell/server holds epoch n" and "cell: unreadable (why)", sorted
	Message  string
}

// DecideHandover is the operator's hand-over gate for a pending epoch. A pending epoch takes
// effect as published only when every server holding a worker lease in every cell reports
// holding it. When some do not, and the epoch can still be changed safely, it is pushed back:
//   - not before 2×HandoverMargin ahead of its effective time, so readers had the whole delay
//     minus that to load it;
//   - only while it is more than HandoverMargin ahead (CanReplan), so the servers that hold
//     the old plan read the announcement of the new one before acting on the old;
//   - only when every cell's control schema could be read: a push-back must reach every
//     server that may hold the plan it replaces, and an unreadable cell's servers cannot be
//     told (nor asked);
//   - at most MaxHandoverWait past the epoch's first planned effective time.
//
// Otherwise the epoch takes effect as published and the decision says who may lack it. Those
// servers refuse to issue IDs by themselves (routing.StaleFor), so a late server costs
// capacity, never a duplicate owner.
func DecideHandover(in HandoverInput) HandoverDecision {
	e := in.Latest
	if e == nil || !e.EffectiveTime.After(in.Now) {
		return HandoverDecision{Reason: HandoverNone}
	}
	var behind []string
	unreadable := false
	for _, c := range in.Cells {
		if c.Err != "" {
			unreadable = true
			behind = append(behind, fmt.Sprintf("%s: unreadable (%s)", c.Cell, c.Err))
			continue
		}
		for server, held := range c.Servers {
			if held < e.Number {
				behind = append(behind, fmt.Sprintf("%s/%s holds epoch %d", c.Cell, server, held))
			}
		}
	}
	slices.Sort(behind)
	at := e.EffectiveTime.UTC().Format(time.RFC3339)
	if len(behind) == 0 {
		return HandoverDecision{Reason: HandoverComplete,
			Message: fmt.Sprintf("routing epoch %d takes effect at %s; every issuing server holds it", e.Number, at)}
	}
	list := strings.Join(behind, ", ")
	left := e.EffectiveTime.Sub(in.Now)
	first := e.EffectiveTime
	if !e.FirstEffectiveTime.IsZero() {
		first = e.FirstEffectiveTime
	}
	delay, _ := ClampDelay(in.Delay)
	withinBound := in.Now.Add(delay).Sub(first) <= MaxHandoverWait
	switch {
	case left > 2*HandoverMargin:
		return HandoverDecision{Reason: HandoverWaiting, Behind: behind,
			Message: fmt.Sprintf("routing epoch %d takes effect at %s; waiting for %s", e.Number, at, list)}
	case CanReplan(e, in.Now) && !unreadable && withinBound:
		return HandoverDecision{Reason: HandoverPushedBack, PushBack: true, Behind: behind,
			Message: fmt.Sprintf("routing epoch %d pushed back: %s", e.Number, list)}
	}
	why := "too close to its effective time to change"
	switch {
	case unreadable:
		why = "a cell cannot be read, so a change could not reach all its servers"
	case !withinBound:
		why = fmt.Sprintf("already pushed back %s past its first time %s", MaxHandoverWait, first.UTC().Format(time.RFC3339))
	}
	return HandoverDecision{Reason: HandoverIncomplete, Behind: behind,
		Message: fmt.Sprintf("routing epoch %d takes effect at %s without every server holding it (%s); those refuse to issue IDs until they load it: %s", e.Number, at, why, list)}
}
