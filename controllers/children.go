package controllers

import (
	"encoding/json"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"time"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// Ports and paths shared by the children and the binaries they run.
const (
	ServerPort    = 8080
	MySQLPort     = 3306
	MemcachedPort = 11211

	routingMount = "/etc/redpacket/routing"
	cellMount    = "/etc/redpacket/cell"
	signingMount = "/etc/redpacket/signing"
)

func setLabels(set *rpv1.RedPacketSet, cell string) map[string]string {
	l := map[string]string{
		rpv1.LabelSet:       set.Name,
		rpv1.LabelName:      "redpacket",
		rpv1.LabelManagedBy: rpv1.ManagedByOperator,
	}
	if cell != "" {
		l[rpv1.LabelCell] = cell
	}
	return l
}

func cellLabels(cell *rpv1.RedPacketCell, component string) map[string]string {
	return map[string]string{
		rpv1.LabelSet:       cell.Spec.SetName,
		rpv1.LabelCell:      cell.Name,
		rpv1.LabelName:      "redpacket",
		rpv1.LabelComponent: component,
		rpv1.LabelManagedBy: rpv1.ManagedByOperator,
	}
}

// selectorLabels are the immutable subset used in selectors.
func selectorLabels(cell *rpv1.RedPacketCell, component string) map[string]string {
	return map[string]string{rpv1.LabelCell: cell.Name, rpv1.LabelComponent: component}
}

func ownerRef(obj metav1.Object, gvk schema.GroupVersionKind) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(gvk.GroupVersion().String()).WithKind(gvk.Kind).
		WithName(obj.GetName()).WithUID(obj.GetUID()).
		WithController(true).WithBlockOwnerDeletion(true)
}

func unstructuredOf(m map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: m}
}

func metaTime(t time.Time) metav1.Time { return metav1.NewTime(t.UTC()) }

func equalStatus(a, b any) bool { return equality.Semantic.DeepEqual(a, b) }

// cellConfig is the cell server's settings file (cell.json in the cell ConfigMap). The
// server's flags take the same values; the file lets an SRE see them in one place.
type cellConfig struct {
	Set            string            `json:"set"`
	Cell           string            `json:"cell"`
	Region         int32             `json:"region"`
	SlotCount      int32             `json:"slotCount"`
	Slots          []rpv1.SlotRange  `json:"slots"`
	Draining       bool              `json:"draining"`
	ShardDatabases int32             `json:"shardDatabases"`
	ShardTables    int32             `json:"shardTablesPerDatabase"`
	Queue          rpv1.QueueSpec    `json:"queue"`
	GuardLimit     int32             `json:"guardLimit"`
	Limits         map[string]string `json:"limits"`
}

// mysqlInitScript grants the server's user what it needs and nothing more: its sharded
// schemas, the control schema and the outbox/ledger schemas. It runs once, at the first
// start of an empty datadir, reading passwords from the environment so no secret lands in
// the ConfigMap.
const mysqlInitScript = `#!/bin/bash
set -euo pipefail
mariadb -uroot -p"${MARIADB_ROOT_PASSWORD}" <<SQL
CREATE USER IF NOT EXISTS '${RP_DB_USER}'@'%' IDENTIFIED BY '${RP_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON \` + "`" + `db\_%\` + "`" + `.* TO '${RP_DB_USER}'@'%';
GRANT ALL PRIVILEGES ON \` + "`" + `rp\_%\` + "`" + `.* TO '${RP_DB_USER}'@'%';
FLUSH PRIVILEGES;
SQL
`

func cellConfigMap(cell *rpv1.RedPacketCell) (*corev1ac.ConfigMapApplyConfiguration, error) {
	cfg := cellConfig{
		Set: cell.Spec.SetName, Cell: cell.Name, Region: cell.Spec.Region, SlotCount: cell.Spec.SlotCount,
		Slots: cell.Spec.Slots, Draining: cell.Spec.Draining,
		ShardDatabases: cell.Spec.Template.Shards.Databases, ShardTables: cell.Spec.Template.Shards.TablesPerDatabase,
		Queue: cell.Spec.Template.Queue, GuardLimit: cell.Spec.Template.Guard.Limit,
		Limits: map[string]string{
			"maxTotalCents": strconv.FormatInt(cell.Spec.Limits.MaxTotalCents, 10),
			"maxCount":      strconv.Itoa(int(cell.Spec.Limits.MaxCount)),
			"expiry":        cell.Spec.Limits.ExpiryOrDefault().String(),
		},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode cell config: %w", err)
	}
	return corev1ac.ConfigMap(cell.ConfigMapName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithData(map[string]string{rpv1.CellConfigFile: string(data), "01-grants.sh": mysqlInitScript}), nil
}

var cellGVK = rpv1.GroupVersion.WithKind("RedPacketCell")

func mysqlService(cell *rpv1.RedPacketCell) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(cell.MySQLName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentMySQL)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(corev1ac.ServiceSpec().
			WithClusterIP(corev1.ClusterIPNone).
			WithSelector(selectorLabels(cell, rpv1.ComponentMySQL)).
			WithPorts(corev1ac.ServicePort().WithName("mysql").WithPort(MySQLPort).WithTargetPort(intstr.FromInt32(MySQLPort))))
}

func zoneSpread(cell *rpv1.RedPacketCell, component string) *corev1ac.TopologySpreadConstraintApplyConfiguration {
	return corev1ac.TopologySpreadConstraint().
		WithMaxSkew(1).
		WithTopologyKey(rpv1.ZoneTopologyKey).
		WithWhenUnsatisfiable(corev1.DoNotSchedule).
		WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, component)))
}

// zoneAffinity keeps pods inside the set's zones, so the spread is over exactly those.
func zoneAffinity(zones []string) *corev1ac.AffinityApplyConfiguration {
	return corev1ac.Affinity().WithNodeAffinity(corev1ac.NodeAffinity().
		WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.NodeSelector().
			WithNodeSelectorTerms(corev1ac.NodeSelectorTerm().
				WithMatchExpressions(corev1ac.NodeSelectorRequirement().
					WithKey(rpv1.ZoneTopologyKey).WithOperator(corev1.NodeSelectorOpIn).WithValues(zones...)))))
}

func resourcesAC(r corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	ac := corev1ac.ResourceRequirements()
	if len(r.Requests) > 0 {
		ac.WithRequests(r.Requests)
	}
	if len(r.Limits) > 0 {
		ac.WithLimits(r.Limits)
	}
	return ac
}

func secretEnv(name, secret, key string) *corev1ac.EnvVarApplyConfiguration {
	return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().
		WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(secret).WithKey(key)))
}

// mysqlStatefulSet runs the cell's database with durable settings: an acknowledged open must
// survive a crash, so every commit is flushed and the binlog synced.
func mysqlStatefulSet(cell *rpv1.RedPacketCell) *appsv1ac.StatefulSetApplyConfiguration {
	m := cell.Spec.Template.MySQL
	storage := resource.MustParse("10Gi")
	if m.Storage != nil {
		storage = *m.Storage
	}
	replicas := m.Replicas
	if replicas < 1 {
		replicas = 1
	}
	pvc := corev1ac.PersistentVolumeClaim("data", "").
		WithSpec(corev1ac.PersistentVolumeClaimSpec().
			WithAccessModes(corev1.ReadWriteOnce).
			WithResources(corev1ac.VolumeResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceStorage: storage})))
	if m.StorageClassName != nil {
		pvc.Spec.WithStorageClassName(*m.StorageClassName)
	}
	secret := cell.MySQLSecretName()
	container := corev1ac.Container().
		WithName("mysql").
		WithImage(m.Image).
		WithArgs(
			"--innodb-flush-log-at-trx-commit=1",
			"--sync-binlog=1",
			"--log-bin=mysql-bin",
			"--binlog-format=ROW",
			"--max-connections=2000",
			"--transaction-isolation=READ-COMMITTED",
		).
		WithPorts(corev1ac.ContainerPort().WithName("mysql").WithContainerPort(MySQLPort)).
		WithEnv(
			secretEnv("MARIADB_ROOT_PASSWORD", secret, "root-password"),
			secretEnv("RP_DB_USER", secret, "user"),
			secretEnv("RP_DB_PASSWORD", secret, "password"),
		).
		WithResources(resourcesAC(m.Resources)).
		WithReadinessProbe(corev1ac.Probe().
			WithExec(corev1ac.ExecAction().WithCommand("healthcheck.sh", "--connect", "--innodb_initialized")).
			WithPeriodSeconds(5).WithTimeoutSeconds(3).WithFailureThreshold(3)).
		WithLivenessProbe(corev1ac.Probe().
			WithExec(corev1ac.ExecAction().WithCommand("healthcheck.sh", "--connect")).
			WithInitialDelaySeconds(60).WithPeriodSeconds(10).WithTimeoutSeconds(5)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("data").WithMountPath("/var/lib/mysql"),
			corev1ac.VolumeMount().WithName("init").WithMountPath("/docker-entrypoint-initdb.d").WithReadOnly(true),
		)
	return appsv1ac.StatefulSet(cell.MySQLName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentMySQL)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(appsv1ac.StatefulSetSpec().
			WithReplicas(replicas).
			WithServiceName(cell.MySQLName()).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, rpv1.ComponentMySQL))).
			WithVolumeClaimTemplates(pvc).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(cellLabels(cell, rpv1.ComponentMySQL)).
				WithSpec(corev1ac.PodSpec().
					WithAffinity(zoneAffinity(cell.Spec.Zones)).
					WithTopologySpreadConstraints(zoneSpread(cell, rpv1.ComponentMySQL)).
					WithContainers(container).
					WithVolumes(corev1ac.Volume().WithName("init").WithConfigMap(
						corev1ac.ConfigMapVolumeSource().WithName(cell.ConfigMapName()).WithDefaultMode(0o555).
							WithItems(corev1ac.KeyToPath().WithKey("01-grants.sh").WithPath("01-grants.sh")))))))
}

// serverDeployment runs the cell servers, each with memcached beside it in the same pod.
func serverDeployment(cell *rpv1.RedPacketCell) *appsv1ac.DeploymentApplyConfiguration {
	t := cell.Spec.Template
	secret := cell.MySQLSecretName()
	dsn := fmt.Sprintf("$(RP_DB_USER):$(RP_DB_PASSWORD)@tcp(%s:%d)/?parseTime=true&interpolateParams=true",
		cell.MySQLPodName(0)+"."+cell.MySQLName(), MySQLPort)
	server := corev1ac.Container().
		WithName("cellserver").
		WithImage(t.Server.Image).
		WithArgs(
			fmt.Sprintf("-listen=:%d", ServerPort),
			"-mysql-dsn="+dsn,
			fmt.Sprintf("-memcached=127.0.0.1:%d", MemcachedPort),
			"-routing-file="+routingMount+"/"+rpv1.RoutingFile,
			"-cell="+cell.Name,
			"-server-name=$(POD_NAME)",
			fmt.Sprintf("-slots=%d", cell.Spec.SlotCount),
			fmt.Sprintf("-region=%d", cell.Spec.Region),
			fmt.Sprintf("-shard-databases=%d", t.Shards.Databases),
			fmt.Sprintf("-shard-tables=%d", t.Shards.TablesPerDatabase),
			fmt.Sprintf("-queue-workers=%d", t.Queue.Workers),
			fmt.Sprintf("-queue-depth=%d", t.Queue.Depth),
			fmt.Sprintf("-batch-max=%d", t.Queue.BatchMax),
			fmt.Sprintf("-guard-limit=%d", t.Guard.Limit),
			"-expiry="+cell.Spec.Limits.ExpiryOrDefault().String(),
			fmt.Sprintf("-max-total-cents=%d", cell.Spec.Limits.MaxTotalCents),
			fmt.Sprintf("-max-count=%d", cell.Spec.Limits.MaxCount),
			"-signing-key-file="+signingMount+"/key",
		).
		WithEnv(
			corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.name"))),
			secretEnv("RP_DB_USER", secret, "user"),
			secretEnv("RP_DB_PASSWORD", secret, "password"),
		).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(ServerPort)).
		WithResources(resourcesAC(t.Server.Resources)).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("http"))).
			WithPeriodSeconds(2).WithFailureThreshold(2)).
		WithLivenessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("http"))).
			WithPeriodSeconds(10).WithFailureThreshold(3)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("routing").WithMountPath(routingMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("cell").WithMountPath(cellMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("signing").WithMountPath(signingMount).WithReadOnly(true),
		)
	memcached := corev1ac.Container().
		WithName("memcached").
		WithImage(t.Memcached.Image).
		WithArgs("-l", "127.0.0.1", "-p", strconv.Itoa(MemcachedPort), "-U", "0", "-m", strconv.Itoa(int(t.Memcached.MemoryMB))).
		WithResources(resourcesAC(t.Memcached.Resources)).
		WithReadinessProbe(corev1ac.Probe().WithTCPSocket(corev1ac.TCPSocketAction().WithPort(intstr.FromInt32(MemcachedPort)).WithHost("127.0.0.1")).WithPeriodSeconds(5))
	return appsv1ac.Deployment(cell.ServerName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(cell.Spec.Servers).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, rpv1.ComponentServer))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(cellLabels(cell, rpv1.ComponentServer)).
				WithSpec(corev1ac.PodSpec().
					WithAffinity(zoneAffinity(cell.Spec.Zones)).
					WithTopologySpreadConstraints(zoneSpread(cell, rpv1.ComponentServer)).
					// Long enough for the server to drain its queues and outbox.
					WithTerminationGracePeriodSeconds(60).
					WithContainers(server, memcached).
					WithVolumes(
						corev1ac.Volume().WithName("routing").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(cell.RoutingConfigMapName())),
						corev1ac.Volume().WithName("cell").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(cell.ConfigMapName())),
						corev1ac.Volume().WithName("signing").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(cell.SigningSecretName())),
					))))
}

// serverService is headless: the gateway resolves it to every ready server and picks one by
// rendezvous hashing of the packet ID, so one packet always meets one queue.
func serverService(cell *rpv1.RedPacketCell) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(cell.ServerName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(corev1ac.ServiceSpec().
			WithClusterIP(corev1.ClusterIPNone).
			WithSelector(selectorLabels(cell, rpv1.ComponentServer)).
			WithPorts(corev1ac.ServicePort().WithName("http").WithPort(ServerPort).WithTargetPort(intstr.FromString("http"))))
}

func serverPDB(cell *rpv1.RedPacketCell) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(cell.ServerName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, rpv1.ComponentServer))))
}

// gatewayObjects are the set's access layer: a Deployment and a Service.
func gatewayObjects(set *rpv1.RedPacketSet) []runtime.ApplyConfiguration {
	labels := setLabels(set, "")
	labels[rpv1.LabelComponent] = rpv1.ComponentGateway
	sel := map[string]string{rpv1.LabelSet: set.Name, rpv1.LabelComponent: rpv1.ComponentGateway}
	g := set.Spec.Gateway
	owner := ownerRef(set, rpv1.GroupVersion.WithKind("RedPacketSet"))
	c := corev1ac.Container().
		WithName("gateway").
		WithImage(g.Image).
		WithArgs(
			fmt.Sprintf("-listen=:%d", ServerPort),
			"-routing-file="+routingMount+"/"+rpv1.RoutingFile,
			"-signing-key-file="+signingMount+"/key",
			"-endpoints=dns",
			"-namespace=$(POD_NAMESPACE)",
			fmt.Sprintf("-server-port=%d", ServerPort),
		).
		WithEnv(corev1ac.EnvVar().WithName("POD_NAMESPACE").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.namespace")))).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(ServerPort)).
		WithResources(resourcesAC(g.Resources)).
		WithLivenessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("http"))).WithPeriodSeconds(10)).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("http"))).WithPeriodSeconds(2)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("routing").WithMountPath(routingMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("signing").WithMountPath(signingMount).WithReadOnly(true),
		)
	dep := appsv1ac.Deployment(set.GatewayName(), set.Namespace).
		WithLabels(labels).
		WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(g.Replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(sel)).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(labels).
				WithSpec(corev1ac.PodSpec().
					// Longer than the gateway's -drain-delay (5 s) plus in-flight requests.
					WithTerminationGracePeriodSeconds(30).
					WithTopologySpreadConstraints(corev1ac.TopologySpreadConstraint().WithMaxSkew(1).
						WithTopologyKey(rpv1.ZoneTopologyKey).WithWhenUnsatisfiable(corev1.ScheduleAnyway).
						WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(sel))).
					WithContainers(c).
					WithVolumes(
						corev1ac.Volume().WithName("routing").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(set.RoutingConfigMapName())),
						corev1ac.Volume().WithName("signing").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(set.SigningSecretName())),
					))))
	svc := corev1ac.Service(set.GatewayName(), set.Namespace).
		WithLabels(labels).
		WithOwnerReferences(owner).
		WithSpec(corev1ac.ServiceSpec().
			WithSelector(sel).
			WithPorts(corev1ac.ServicePort().WithName("http").WithPort(80).WithTargetPort(intstr.FromString("http"))))
	return []runtime.ApplyConfiguration{dep, svc}
}
