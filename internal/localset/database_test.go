package localset

import (
	"path/filepath"
	"testing"
)

func TestReplicatedSampleManifest(t *testing.T) {
	set, err := LoadManifest(filepath.Join("..", "..", "config", "samples", "redpacket_v1alpha1_redpacketset_replicated.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if set.Spec.Template.MySQL.Replicas != 3 || len(set.Spec.Zones) != 3 {
		t.Fatalf("replicated sample: %d replicas over %v", set.Spec.Template.MySQL.Replicas, set.Spec.Zones)
	}
}

func TestAssignReplicaPortsKeepsPortsAndAvoidsRecordedOnes(t *testing.T) {
	st, err := AssignPorts(nil, []CellNeed{{"c0", 1}, {"c1", 1}}, fakeFree(40000))
	if err != nil {
		t.Fatal(err)
	}
	// The port source offers recorded ports first; they must be skipped.
	for _, c := range []string{"c0", "c1"} {
		if err := AssignReplicaPorts(st, c, 3, fakeFree(40000)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int]bool{st.GatewayPort: true}
	for _, c := range st.Cells {
		if len(c.MySQLPorts()) != 3 || len(c.InstanceAddrs()) != 3 {
			t.Fatalf("cell %s: ports %v", c.Name, c.MySQLPorts())
		}
		for _, p := range append(append(c.MySQLPorts(), c.MemcachedPort), c.ServerPorts...) {
			if seen[p] {
				t.Fatalf("port %d assigned twice: %+v", p, st.Cells)
			}
			seen[p] = true
		}
	}
	again, err := AssignPorts(st, []CellNeed{{"c0", 1}, {"c1", 1}}, fakeFree(50000))
	if err != nil {
		t.Fatal(err)
	}
	c0, _ := again.Cell("c0")
	if err := AssignReplicaPorts(again, "c0", 3, fakeFree(60000)); err != nil {
		t.Fatal(err)
	}
	if want, _ := st.Cell("c0"); c0.ReplicaPorts[0] != want.ReplicaPorts[0] || c0.ReplicaPorts[1] != want.ReplicaPorts[1] {
		t.Errorf("replica ports moved between runs: %v then %v", want.ReplicaPorts, c0.ReplicaPorts)
	}
	if c0.PrimaryIndex() != 0 {
		t.Errorf("no history: primary %d, want 0", c0.PrimaryIndex())
	}
}
