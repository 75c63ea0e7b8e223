package controllers

import (
	"encoding/json"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
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
	"github.com/redpacketset/redpacket/cellserver/serverargs"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

// Ports and paths shared by the children and the binaries they run.
const (
	ServerPort    = 8080
	MySQLPort     = 3306
	MemcachedPort = 11211

	routingMount = "/etc/redpacket/routing"
	cellMount    = "/etc/redpacket/cell"
	signingMount = "/etc/redpacket/signing"
	dbAuthMount  = "/etc/redpacket/db"
)

// The users the children run as. Pod Security "restricted" needs runAsNonRoot, and the kubelet
// can only verify it for a numeric user, so each is named here rather than left to the image:
// the project's images run as 65532 (make images), the official mariadb image's mysql user is
// 999 and the official memcached image's memcache user is 11211; the images make images builds
// from Debian packages keep those numbers (docs/operator.md, "Images").
const (
	projectUID   int64 = 65532
	mysqlUID     int64 = 999
	memcachedUID int64 = 11211
)

// restrictedPod is the pod half of the restricted profile; fsGroup makes mounted volumes (the
// database's PVC, the credentials file) readable by the container's user.
func restrictedPod(fsGroup int64) *corev1ac.PodSecurityContextApplyConfiguration {
	return corev1ac.PodSecurityContext().
		WithRunAsNonRoot(true).
		WithFSGroup(fsGroup).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
}

// restrictedContainer is the container half. A read-only root suits the static binaries and
// memcached, which write nothing; MariaDB writes its socket and temporary files outside the PVC.
func restrictedContainer(uid int64, readOnlyRoot bool) *corev1ac.SecurityContextApplyConfiguration {
	return corev1ac.SecurityContext().
		WithRunAsUser(uid).WithRunAsGroup(uid).WithRunAsNonRoot(true).
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(readOnlyRoot).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))
}

// Requests a container gets when its spec names none: without them a pod is BestEffort, the
// first the kubelet evicts under memory pressure, and the scheduler packs it anywhere.
var (
	defaultServerRequests  = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")}
	defaultMySQLRequests   = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")}
	defaultGatewayRequests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
)

// memcachedRequests holds memcached's item memory (-m) plus its connection buffers and hash table.
func memcachedRequests(memoryMB int32) corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("50m"),
		corev1.ResourceMemory: *resource.NewQuantity(int64(memoryMB+32)<<20, resource.BinarySI),
	}
}

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
# MYSQL_PWD, not -p: an argument would show the root password in the process list.
MYSQL_PWD="${MARIADB_ROOT_PASSWORD}" mariadb -uroot <<SQL
-- Every instance of a replicated cell runs this on its own: logged, each would hold GTIDs of
-- its own server_id, which the failover logic refuses as errant.
SET SESSION sql_log_bin=0;
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
			// Each instance keeps its name while not ready: the failover logic and the
			// replicas must reach a read-only or recovering instance too.
			WithPublishNotReadyAddresses(true).
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

// resourcesAC is r with a request for every resource in defaults that r leaves open. A
// resource with only a limit is requested at its limit, as the API server would default it;
// a default above that limit would make the pod invalid.
func resourcesAC(r corev1.ResourceRequirements, defaults corev1.ResourceList) *corev1ac.ResourceRequirementsApplyConfiguration {
	req := corev1.ResourceList{}
	for name, q := range r.Requests {
		req[name] = q
	}
	for name, q := range defaults {
		if _, ok := req[name]; ok {
			continue
		}
		if limit, ok := r.Limits[name]; ok {
			req[name] = limit
		} else {
			req[name] = q
		}
	}
	ac := corev1ac.ResourceRequirements()
	if len(req) > 0 {
		ac.WithRequests(req)
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
	// Written as the apiserver stores it (no type or namespace inside a template, the default
	// volume mode spelled out), so an unchanged StatefulSet compares equal and is not applied.
	pvc := (&corev1ac.PersistentVolumeClaimApplyConfiguration{}).WithName("data").
		WithSpec(corev1ac.PersistentVolumeClaimSpec().
			WithAccessModes(corev1.ReadWriteOnce).
			WithVolumeMode(corev1.PersistentVolumeFilesystem).
			WithResources(corev1ac.VolumeResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceStorage: storage})))
	if m.StorageClassName != nil {
		pvc.Spec.WithStorageClassName(*m.StorageClassName)
	}
	secret := cell.MySQLSecretName()
	args := []string{
		"--innodb-flush-log-at-trx-commit=1",
		"--sync-binlog=1",
		"--log-bin=mysql-bin",
		"--binlog-format=ROW",
		"--max-connections=2000",
		"--transaction-isolation=READ-COMMITTED",
	}
	env := []*corev1ac.EnvVarApplyConfiguration{
		secretEnv("MARIADB_ROOT_PASSWORD", secret, "root-password"),
		secretEnv("RP_DB_USER", secret, "user"),
		secretEnv("RP_DB_PASSWORD", secret, "password"),
	}
	if replicas > 1 {
		// Every instance starts read-only and the operator opens one (internal/dbfailover);
		// its server_id follows from its ordinal (rpv1.MySQLServerID), read from the label the
		// StatefulSet controller puts on each pod.
		args = append(args, "--server-id=1$(RP_POD_INDEX)")
		args = append(args, dbfailover.InstanceFlags()...)
		env = append(env, corev1ac.EnvVar().WithName("RP_POD_INDEX").WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath("metadata.labels['apps.kubernetes.io/pod-index']"))))
	}
	container := corev1ac.Container().
		WithName("mysql").
		WithImage(m.Image).
		WithArgs(args...).
		WithPorts(corev1ac.ContainerPort().WithName("mysql").WithContainerPort(MySQLPort)).
		WithEnv(env...).
		WithResources(resourcesAC(m.Resources, defaultMySQLRequests)).
		WithSecurityContext(restrictedContainer(mysqlUID, false)).
		// The first start of an empty volume initialises the datadir and runs the grants; a
		// restart after a crash replays InnoDB's redo log, which on a big volume takes minutes.
		// Liveness starts counting only once this has passed once.
		WithStartupProbe(corev1ac.Probe().
			WithExec(corev1ac.ExecAction().WithCommand("healthcheck.sh", "--connect", "--innodb_initialized")).
			WithPeriodSeconds(10).WithTimeoutSeconds(5).WithFailureThreshold(90)).
		WithReadinessProbe(corev1ac.Probe().
			WithExec(corev1ac.ExecAction().WithCommand("healthcheck.sh", "--connect", "--innodb_initialized")).
			WithPeriodSeconds(5).WithTimeoutSeconds(3).WithFailureThreshold(3)).
		WithLivenessProbe(corev1ac.Probe().
			WithExec(corev1ac.ExecAction().WithCommand("healthcheck.sh", "--connect")).
			WithPeriodSeconds(10).WithTimeoutSeconds(5).WithFailureThreshold(3)).
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
					WithAutomountServiceAccountToken(false).
					WithSecurityContext(restrictedPod(mysqlUID)).
					WithAffinity(zoneAffinity(cell.Spec.Zones)).
					WithTopologySpreadConstraints(zoneSpread(cell, rpv1.ComponentMySQL)).
					WithContainers(container).
					WithVolumes(corev1ac.Volume().WithName("init").WithConfigMap(
						corev1ac.ConfigMapVolumeSource().WithName(cell.ConfigMapName()).WithDefaultMode(0o555).
							WithItems(corev1ac.KeyToPath().WithKey("01-grants.sh").WithPath("01-grants.sh")))))))
}

// databaseInstances lists a replicated cell's database pods for its servers, which write to
// whichever is writable (cellserver/primarydb); nil for a single instance.
func databaseInstances(cell *rpv1.RedPacketCell) []string {
	if cell.MySQLInstances() < 2 {
		return nil
	}
	out := make([]string, cell.MySQLInstances())
	for i := range out {
		out[i] = podDatabaseAddr(cell, i)
	}
	return out
}

// serverDeployment runs the cell servers, each with memcached beside it in the same pod.
func serverDeployment(cell *rpv1.RedPacketCell) *appsv1ac.DeploymentApplyConfiguration {
	t := cell.Spec.Template
	secret := cell.MySQLSecretName()
	// The password is read from a file by the server: a $(VAR) in args is expanded by the
	// kubelet into the process's argv, which every user of the node can read.
	dsn := fmt.Sprintf("$(RP_DB_USER)@tcp(%s:%d)/?parseTime=true&interpolateParams=true",
		cell.MySQLPodName(0)+"."+cell.MySQLName(), MySQLPort)
	server := corev1ac.Container().
		WithName("cellserver").
		WithImage(t.Server.Image).
		WithArgs(serverargs.Args{
			Listen:            fmt.Sprintf(":%d", ServerPort),
			MySQLDSN:          dsn,
			MySQLPasswordFile: dbAuthMount + "/password",
			Memcached:         fmt.Sprintf("127.0.0.1:%d", MemcachedPort),
			// memcached listens on the pod's loopback, which no kubelet probe can reach (a
			// probe's host is the node's): the server's readiness asks it instead.
			ReadyMemcached: true,
			RoutingFile:    routingMount + "/" + rpv1.RoutingFile,
			Cell:           cell.Name,
			ServerName:     "$(POD_NAME)",
			Slots:          int(cell.Spec.SlotCount),
			Region:         int(cell.Spec.Region),
			ShardDatabases: int(t.Shards.Databases),
			ShardTables:    int(t.Shards.TablesPerDatabase),
			QueueWorkers:   int(t.Queue.Workers),
			QueueDepth:     int(t.Queue.Depth),
			BatchMax:       int(t.Queue.BatchMax),
			GuardLimit:     int(t.Guard.Limit),
			Expiry:         cell.Spec.Limits.ExpiryOrDefault(),
			MaxTotalCents:  cell.Spec.Limits.MaxTotalCents,
			MaxCount:       int(cell.Spec.Limits.MaxCount),
			SigningKeyFile: signingMount + "/key",
			MySQLInstances: databaseInstances(cell),
		}.Flags()...).
		WithEnv(
			corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath("metadata.name"))),
			secretEnv("RP_DB_USER", secret, "user"),
		).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(ServerPort)).
		WithResources(resourcesAC(t.Server.Resources, defaultServerRequests)).
		WithSecurityContext(restrictedContainer(projectUID, true)).
		// The server listens only once its database answers (up to 2 min) and its schema
		// exists (up to 10 min on a first start of the full layout, cmd/cellserver); until
		// then liveness must not count, or a slow database gets the server killed in a loop.
		WithStartupProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("http"))).
			WithPeriodSeconds(5).WithFailureThreshold(150)).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("http"))).
			WithPeriodSeconds(2).WithFailureThreshold(2)).
		WithLivenessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("http"))).
			WithPeriodSeconds(10).WithFailureThreshold(3)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("routing").WithMountPath(routingMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("cell").WithMountPath(cellMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("signing").WithMountPath(signingMount).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("db-auth").WithMountPath(dbAuthMount).WithReadOnly(true),
		)
	memcached := corev1ac.Container().
		WithName("memcached").
		WithImage(t.Memcached.Image).
		WithArgs("-l", "127.0.0.1", "-p", strconv.Itoa(MemcachedPort), "-U", "0", "-m", strconv.Itoa(int(t.Memcached.MemoryMB))).
		WithResources(resourcesAC(t.Memcached.Resources, memcachedRequests(t.Memcached.MemoryMB))).
		WithSecurityContext(restrictedContainer(memcachedUID, true))
	return appsv1ac.Deployment(cell.ServerName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(cell.Spec.Servers).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, rpv1.ComponentServer))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(cellLabels(cell, rpv1.ComponentServer)).
				WithSpec(corev1ac.PodSpec().
					WithAutomountServiceAccountToken(false).
					WithSecurityContext(restrictedPod(projectUID)).
					WithAffinity(zoneAffinity(cell.Spec.Zones)).
					WithTopologySpreadConstraints(zoneSpread(cell, rpv1.ComponentServer)).
					// Long enough for the server to drain its queues and outbox.
					WithTerminationGracePeriodSeconds(60).
					WithContainers(server, memcached).
					WithVolumes(
						corev1ac.Volume().WithName("routing").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(cell.RoutingConfigMapName())),
						corev1ac.Volume().WithName("cell").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(cell.ConfigMapName())),
						corev1ac.Volume().WithName("signing").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(cell.SigningSecretName())),
						// Only the password, readable by the pod's fsGroup and nobody else.
						corev1ac.Volume().WithName("db-auth").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(secret).
							WithDefaultMode(0o440).WithItems(corev1ac.KeyToPath().WithKey("password").WithPath("password"))),
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

// mysqlPDB keeps a voluntary eviction (a node drain) from taking the cell's primary: the
// servers write only to pod 0, so its eviction is an outage of the cell. The drain waits until
// an SRE moves the database deliberately. A primary that is not ready anyway may be evicted,
// or a crash-looping database would block every drain of its node.
func mysqlPDB(cell *rpv1.RedPacketCell) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	sel := selectorLabels(cell, rpv1.ComponentMySQL)
	sel[appsv1.StatefulSetPodNameLabel] = cell.MySQLPodName(0)
	return policyv1ac.PodDisruptionBudget(cell.MySQLName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentMySQL)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMinAvailable(intstr.FromInt32(1)).
			WithUnhealthyPodEvictionPolicy(policyv1.AlwaysAllow).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(sel)))
}

func serverPDB(cell *rpv1.RedPacketCell) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(cell.ServerName(), cell.Namespace).
		WithLabels(cellLabels(cell, rpv1.ComponentServer)).
		WithOwnerReferences(ownerRef(cell, cellGVK)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cell, rpv1.ComponentServer))))
}

// gatewayObjects are the set's access layer: a Deployment, its Service and its disruption budget.
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
		WithEnv(corev1ac.EnvVar().WithName("POD_NAMESPACE").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath("metadata.namespace")))).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(ServerPort)).
		WithResources(resourcesAC(g.Resources, defaultGatewayRequests)).
		WithSecurityContext(restrictedContainer(projectUID, true)).
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
					WithAutomountServiceAccountToken(false).
					WithSecurityContext(restrictedPod(projectUID)).
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
	// One gateway at a time may go in a drain; the others keep serving the set.
	pdb := policyv1ac.PodDisruptionBudget(set.GatewayName(), set.Namespace).
		WithLabels(labels).
		WithOwnerReferences(owner).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(sel)))
	return []runtime.ApplyConfiguration{dep, svc, pdb}
}
