package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// SwitchoverResult is how a requested switchover went.
type SwitchoverResult struct {
	Cell string `json:"cell"`
	From string `json:"from"`
	To   string `json:"to"`
	Term int32  `json:"term"`
}

// Switchover asks the operator to hand a replicated cell's primary role to one of its database
// pods (by name or ordinal), for maintenance, and waits up to wait for the outcome. The
// operator does the work (it fences the primary, lets the target catch up, records the term)
// and removes the request; a refusal comes back as the operator's event.
func (p *Plugin) Switchover(ctx context.Context, cellName, to string, wait time.Duration) (*SwitchoverResult, error) {
	cell, err := p.getCell(ctx, cellName)
	if err != nil {
		return nil, err
	}
	if cell.MySQLInstances() < 2 {
		return nil, fmt.Errorf("%w: cell %s runs one database instance: there is no replica to switch over to", ErrBadInput, cellName)
	}
	i, ok := cell.MySQLOrdinal(to)
	if !ok {
		return nil, fmt.Errorf("%w: --to %q names none of cell %s's database pods (%s)", ErrBadInput, to, cellName, cell.MySQLPodRange())
	}
	target := cell.MySQLPodName(i)
	res := &SwitchoverResult{Cell: cellName, To: target}
	if cell.Status.Database != nil {
		res.From = cell.Status.Database.Primary
	}
	if res.From == "" {
		return nil, fmt.Errorf("cell %s has no primary yet (status.database): wait for DatabaseReady", cellName)
	}
	if res.From == target {
		return nil, fmt.Errorf("%w: %s is already cell %s's primary", ErrBadInput, target, cellName)
	}
	asked := p.now().Add(-time.Second) // events are stamped to the second
	patch := client.MergeFrom(cell.DeepCopy())
	if cell.Annotations == nil {
		cell.Annotations = map[string]string{}
	}
	cell.Annotations[rpv1.AnnotationSwitchoverTo] = target
	if err := p.K8s.Patch(ctx, cell, patch); err != nil {
		return nil, fmt.Errorf("request the switchover of cell %s: %w", cellName, err)
	}
	deadline := p.now().Add(wait)
	for {
		if err := p.K8s.Get(ctx, client.ObjectKeyFromObject(cell), cell); err != nil {
			return nil, err
		}
		if _, pending := cell.Annotations[rpv1.AnnotationSwitchoverTo]; !pending {
			break
		}
		if p.now().After(deadline) {
			return nil, fmt.Errorf("the operator has not acted on cell %s's switchover within %s; the request stays (annotation %s)", cellName, wait, rpv1.AnnotationSwitchoverTo)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if db := cell.Status.Database; db != nil && db.Primary == target {
		res.Term = int32(len(db.Terms))
		return res, nil
	}
	if why := p.refusal(ctx, cell, asked); why != "" {
		return nil, errors.New(why)
	}
	return nil, fmt.Errorf("the operator took the request but %s is not cell %s's primary; see kubectl describe rpc %s", target, cellName, cellName)
}

// refusal is the note of the newest DatabaseSwitchoverRefused event on cell since since.
func (p *Plugin) refusal(ctx context.Context, cell *rpv1.RedPacketCell, since time.Time) string {
	var list eventsv1.EventList
	if err := p.K8s.List(ctx, &list, client.InNamespace(cell.Namespace)); err != nil {
		return ""
	}
	var note string
	var at time.Time
	for _, e := range list.Items {
		t := e.EventTime.Time
		if e.Reason != "DatabaseSwitchoverRefused" || e.Regarding.Name != cell.Name || t.Before(since) || t.Before(at) {
			continue
		}
		note, at = e.Note, t
	}
	return note
}
