package controllers

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// cellRollup is the set's view of its cells: which are ready, which are still coming up, and
// which cannot be provisioned. It is computed by a pure function (rollUpCells) so the rules
// behind the set's Available, Degraded and Progressing conditions have table tests.
type cellRollup struct {
	want           int   // cells the newest epoch names
	present, ready int32 // of those: existing, and Available
	missing        []string
	progressing    []string // no Available condition yet, or the newest generation not observed
	unavailable    []string // Available=False for a reason waiting may cure: "cell (reason: message)"
	failed         []string // cannot be provisioned (any cell of the set, draining ones too)
}

// provisioningFailures are the cell reasons that waiting does not cure: a child the API server
// refused, pods a workload controller cannot create, pods that cannot start, a rollout past its
// deadline, a stored value the operator cannot use.
var provisioningFailures = []string{rpv1.ReasonApplyFailed, rpv1.ReasonPodsNotCreated, rpv1.ReasonRolloutStuck, rpv1.ReasonPodsFailing, rpv1.ReasonInvalidSpec}

// cellFailure is why a cell cannot be provisioned, "" when it can.
func cellFailure(c *rpv1.RedPacketCell) string {
	if p := meta.FindStatusCondition(c.Status.Conditions, rpv1.CellProvisioned); p != nil && p.Status == metav1.ConditionFalse {
		return fmt.Sprintf("%s (%s: %s)", c.Name, p.Reason, p.Message)
	}
	if a := meta.FindStatusCondition(c.Status.Conditions, rpv1.CellAvailable); a != nil && a.Status == metav1.ConditionFalse && slices.Contains(provisioningFailures, a.Reason) {
		return fmt.Sprintf("%s (%s: %s)", c.Name, a.Reason, a.Message)
	}
	return ""
}

// rollUpCells classifies the set's cells against the cells the newest epoch names.
func rollUpCells(cells []rpv1.RedPacketCell, latest []string) cellRollup {
	r := cellRollup{want: len(latest)}
	inLatest := map[string]bool{}
	for _, name := range latest {
		inLatest[name] = true
	}
	seen := map[string]bool{}
	for i := range cells {
		c := &cells[i]
		seen[c.Name] = true
		failure := cellFailure(c)
		if failure != "" {
			r.failed = append(r.failed, failure)
		}
		if !inLatest[c.Name] {
			continue
		}
		r.present++
		avail := meta.FindStatusCondition(c.Status.Conditions, rpv1.CellAvailable)
		switch {
		case avail != nil && avail.Status == metav1.ConditionTrue:
			r.ready++
		case failure != "":
		case avail == nil || c.Status.ObservedGeneration != c.Generation:
			r.progressing = append(r.progressing, c.Name)
		default:
			r.unavailable = append(r.unavailable, fmt.Sprintf("%s (%s: %s)", c.Name, avail.Reason, avail.Message))
		}
	}
	for _, name := range latest {
		if !seen[name] {
			r.missing = append(r.missing, name)
		}
	}
	slices.Sort(r.missing)
	return r
}

// conditions are the set's Available, Degraded and Progressing conditions from the rollup
// (ObservedGeneration is the caller's to stamp). A provisioning failure makes the set Degraded
// and stops Progressing (as a Deployment past its deadline does): it is never reported as
// "up to date".
func (r cellRollup) conditions() []metav1.Condition {
	c := func(typ string, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg}
	}
	var out []metav1.Condition
	if int(r.ready) == r.want {
		out = append(out, c(rpv1.SetAvailable, true, rpv1.ReasonAllCellsAvailable, fmt.Sprintf("%d/%d cells available", r.ready, r.want)))
	} else {
		out = append(out, c(rpv1.SetAvailable, false, rpv1.ReasonCellsUnavailable, fmt.Sprintf("%d/%d cells available", r.ready, r.want)))
	}
	switch {
	case len(r.failed) > 0:
		msg := "cannot be provisioned: " + strings.Join(r.failed, "; ")
		if len(r.unavailable) > 0 {
			msg += "; unavailable: " + strings.Join(r.unavailable, "; ")
		}
		out = append(out, c(rpv1.SetDegraded, true, rpv1.ReasonProvisioningFailed, msg))
	case len(r.unavailable) > 0:
		out = append(out, c(rpv1.SetDegraded, true, rpv1.ReasonCellsUnavailable, "unavailable: "+strings.Join(r.unavailable, "; ")))
	default:
		out = append(out, c(rpv1.SetDegraded, false, rpv1.ReasonAllCellsAvailable, "no cell reports a failure"))
	}
	waiting := append(slices.Clone(r.progressing), r.missing...)
	switch {
	case len(r.failed) > 0:
		out = append(out, c(rpv1.SetProgressing, false, rpv1.ReasonProvisioningFailed, "stopped: "+strings.Join(r.failed, "; ")))
	case len(waiting) > 0:
		out = append(out, c(rpv1.SetProgressing, true, rpv1.ReasonCellsProgressing, "waiting for cells: "+strings.Join(waiting, ", ")))
	default:
		out = append(out, c(rpv1.SetProgressing, false, rpv1.ReasonUpToDate, "every cell's children are written and observed"))
	}
	return out
}
