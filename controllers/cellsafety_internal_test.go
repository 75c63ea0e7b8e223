package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// TestCellUpToDate (issue 11 §8): a set reconcile woken by a cell's status change re-applies
// only cells whose desired object differs from what is stored.
func TestCellUpToDate(t *testing.T) {
	set := &rpv1.RedPacketSet{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "default", UID: types.UID("set-uid")}}
	desired := func() *rpv1.RedPacketCell {
		return &rpv1.RedPacketCell{
			ObjectMeta: metav1.ObjectMeta{Name: "s-cell-0", Namespace: "default", Labels: setLabels(set, "s-cell-0")},
			Spec:       rpv1.RedPacketCellSpec{SetName: "s", Index: 0, Servers: 6, Slots: []rpv1.SlotRange{{Start: 0, End: 499}}},
		}
	}
	stored := func() *rpv1.RedPacketCell {
		c := desired()
		c.Labels["extra"] = "added by someone else"
		c.OwnerReferences = []metav1.OwnerReference{{APIVersion: rpv1.GroupVersion.String(), Kind: "RedPacketSet", Name: "s", UID: set.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
		c.Status.ReadyServers = 3 // status is not the set's to write
		return c
	}
	cases := []struct {
		name   string
		mutate func(c *rpv1.RedPacketCell)
		want   bool
	}{
		{"same spec, labels and owner", func(*rpv1.RedPacketCell) {}, true},
		{"servers changed", func(c *rpv1.RedPacketCell) { c.Spec.Servers = 5 }, false},
		{"slots changed", func(c *rpv1.RedPacketCell) { c.Spec.Slots = nil }, false},
		{"a label of ours missing", func(c *rpv1.RedPacketCell) { delete(c.Labels, rpv1.LabelSet) }, false},
		{"owned by another set", func(c *rpv1.RedPacketCell) { c.OwnerReferences[0].UID = "other" }, false},
		{"no owner", func(c *rpv1.RedPacketCell) { c.OwnerReferences = nil }, false},
	}
	for _, tc := range cases {
		s := stored()
		tc.mutate(s)
		if got := cellUpToDate(s, desired(), set); got != tc.want {
			t.Errorf("%s: up to date %v, want %v", tc.name, got, tc.want)
		}
	}
}
