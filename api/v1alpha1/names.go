package v1alpha1

import (
	"fmt"
	"time"
)

// Labels put on every object the operator creates.
const (
	LabelSet       = "redpacket.dev/set"
	LabelCell      = "redpacket.dev/cell"
	LabelComponent = "app.kubernetes.io/component"
	LabelName      = "app.kubernetes.io/name"
	LabelManagedBy = "app.kubernetes.io/managed-by"

	ComponentServer   = "cellserver"
	ComponentMySQL    = "mysql"
	ComponentGateway  = "gateway"
	ManagedByOperator = "redpacket-operator"

	// ZoneTopologyKey is the node label servers spread over.
	ZoneTopologyKey = "topology.kubernetes.io/zone"

	// FinalizerSettle holds a set or cell being deleted until its cells hold no unsettled
	// packet and no undelivered wallet effect (docs/operator.md, "Deleting a set").
	FinalizerSettle = "redpacket.dev/settle"
	// AnnotationDiscardUnsettled, set to "true" on a set or cell being deleted, lets the
	// deletion go on although money is unsettled: the deliberate force path.
	AnnotationDiscardUnsettled = "redpacket.dev/discard-unsettled"
	// AnnotationSwitchoverTo, set on a replicated cell to one of its database pods (its name
	// or its ordinal), asks the operator to hand the primary role to that pod, for
	// maintenance. The operator acts once, removes the annotation, and says how it went in a
	// DatabaseSwitchover or DatabaseSwitchoverRefused event.
	AnnotationSwitchoverTo = "redpacket.dev/switchover-to"
	// AnnotationNeverRouted is the operator's own proof that a cell has never owned a slot in
	// an epoch that took effect, so no packet was ever created in it: it is put on a cell
	// created for a pending epoch only, and taken off (before anything else) by the first
	// reconcile that finds an epoch naming the cell in force or too close to change. A cell
	// carrying it that no kept epoch names is deleted without asking its database, which for
	// a cancelled scale-out may never have come up. Never set it by hand.
	AnnotationNeverRouted = "redpacket.dev/never-routed"

	// RoutingFile is the key of the routing table in the routing ConfigMap.
	RoutingFile = "routing.json"
	// CellConfigFile is the key of the cell server's settings in the cell ConfigMap.
	CellConfigFile = "cell.json"
)

// CellName is the name of the set's i-th cell.
func (s *RedPacketSet) CellName(i int) string { return fmt.Sprintf("%s-cell-%d", s.Name, i) }

// GatewayName names the gateway Deployment and Service.
func (s *RedPacketSet) GatewayName() string { return s.Name + "-gateway" }

// RoutingConfigMapName names the ConfigMap holding the routing table.
func (s *RedPacketSet) RoutingConfigMapName() string { return s.Name + "-routing" }

// SigningSecretName names the Secret holding the gateway→cell request signing key.
func (s *RedPacketSet) SigningSecretName() string { return s.Name + "-signing" }

// HeadroomOrDefault is the headroom in force: the spec's, or 1/len(zones). One zone has no
// zone to lose, so it holds nothing in reserve (1/1 would leave no usable capacity).
func (s *RedPacketSet) HeadroomOrDefault() float64 {
	if s.Spec.Headroom != nil {
		return *s.Spec.Headroom
	}
	if len(s.Spec.Zones) < 2 {
		return 0
	}
	return 1 / float64(len(s.Spec.Zones))
}

// MySQLName names the cell's database StatefulSet and its headless Service.
func (c *RedPacketCell) MySQLName() string { return c.Name + "-mysql" }

// MySQLPodName is the name of the i-th database pod.
func (c *RedPacketCell) MySQLPodName(i int) string { return fmt.Sprintf("%s-%d", c.MySQLName(), i) }

// MySQLHost is the i-th database pod's stable DNS name inside the cluster (through the
// headless Service, which publishes pods whether or not they are ready).
func (c *RedPacketCell) MySQLHost(i int) string {
	return fmt.Sprintf("%s.%s.%s.svc", c.MySQLPodName(i), c.MySQLName(), c.Namespace)
}

// MySQLOrdinal reads a reference to one of the cell's database pods, by name or by ordinal
// ("rp-cell-0-mysql-2" or "2"); ok is false when it names none.
func (c *RedPacketCell) MySQLOrdinal(ref string) (i int, ok bool) {
	for i := range c.MySQLInstances() {
		if ref == c.MySQLPodName(i) || ref == fmt.Sprint(i) {
			return i, true
		}
	}
	return 0, false
}

// MySQLPodRange names what MySQLOrdinal accepts, for a message refusing a reference:
// "rp-cell-0-mysql-0 … rp-cell-0-mysql-2, or 0 … 2".
func (c *RedPacketCell) MySQLPodRange() string {
	last := c.MySQLInstances() - 1
	return fmt.Sprintf("%s … %s, or 0 … %d", c.MySQLPodName(0), c.MySQLPodName(last), last)
}

// MySQLPrimaryHost is the DNS name of the pod that holds the cell's writable database: pod 0
// of a single instance, the open term's primary of a replicated cell (status.database).
func (c *RedPacketCell) MySQLPrimaryHost() string {
	if db := c.Status.Database; db != nil && db.Primary != "" {
		if i, ok := c.MySQLOrdinal(db.Primary); ok {
			return c.MySQLHost(i)
		}
	}
	return c.MySQLHost(0)
}

// MySQLInstances is how many database instances the cell runs.
func (c *RedPacketCell) MySQLInstances() int { return max(int(c.Spec.Template.MySQL.Replicas), 1) }

// MySQLServerID is the server_id of the i-th database pod of a replicated cell: the ordinal
// behind a leading 1 (10, 11, …, 110), because the pod learns its ordinal only as a string
// (the apps.kubernetes.io/pod-index label) and its arguments can join strings but not add;
// server_id 0 would refuse replication.
func MySQLServerID(i int) uint32 {
	var id uint32 = 1
	for _, d := range fmt.Sprint(i) {
		id = id*10 + uint32(d-'0')
	}
	return id
}

// MySQLSecretName names the cell's generated database credentials.
func (c *RedPacketCell) MySQLSecretName() string { return c.Name + "-mysql-credentials" }

// ServerName names the cell server Deployment, its headless Service and its PDB.
func (c *RedPacketCell) ServerName() string { return c.Name + "-server" }

// ConfigMapName names the cell server's settings.
func (c *RedPacketCell) ConfigMapName() string { return c.Name + "-config" }

// RoutingConfigMapName names the routing ConfigMap of the cell's set.
func (c *RedPacketCell) RoutingConfigMapName() string { return c.Spec.SetName + "-routing" }

// SigningSecretName names the signing key Secret of the cell's set.
func (c *RedPacketCell) SigningSecretName() string { return c.Spec.SetName + "-signing" }

// durationOr is d's value, or def when the field is unset (only possible for objects that
// did not pass through the API server's defaulting, such as in-memory test objects).
func durationOr(d *Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.Duration
}

// ExpiryOrDefault is how long after payment a packet may be opened.
func (l PacketLimits) ExpiryOrDefault() time.Duration { return durationOr(l.Expiry, 24*time.Hour) }

// WindowOrDefault is the error-counting window.
func (m MaskingPolicy) WindowOrDefault() time.Duration { return durationOr(m.Window, time.Minute) }

// CoolDownOrDefault is the quiet time before a mask lifts.
func (m MaskingPolicy) CoolDownOrDefault() time.Duration {
	return durationOr(m.CoolDown, 5*time.Minute)
}

// RebalanceDelayOrDefault is how far ahead a new routing epoch takes effect.
func (s *RedPacketSet) RebalanceDelayOrDefault() time.Duration {
	return durationOr(s.Spec.RebalanceDelay, 2*time.Minute)
}
