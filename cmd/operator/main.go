// Command operator runs the RedPacketSet operator: a controller-runtime manager with leader
// election, health and readiness probes and Prometheus metrics, running the set and cell
// reconcilers.
//
// It only wires flags to controllers.Options and starts the manager: it must never hold a
// reconcile rule itself, nor talk to a cell's database outside the reconcilers.
package main

import (
	"flag"
	"log/slog"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/opmetrics"
)

func main() {
	var (
		metricsAddr    = flag.String("metrics-bind-address", ":8080", "address the Prometheus metrics endpoint binds to; 0 disables it")
		probeAddr      = flag.String("health-probe-bind-address", ":8081", "address the /healthz and /readyz probes bind to")
		leaderElect    = flag.Bool("leader-elect", true, "elect one active operator among replicas")
		leaderElectNS  = flag.String("leader-election-namespace", "", "namespace of the leader election lease (default: the pod's)")
		syncPeriod     = flag.Duration("sync-period", 10*time.Minute, "how often every object is reconciled even without changes")
		watchNamespace = flag.String("namespace", "", "only watch this namespace (default: all)")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		log.Error(err, "register built-in types")
		os.Exit(1)
	}
	if err := rpv1.AddToScheme(scheme); err != nil {
		log.Error(err, "register redpacket.dev types")
		os.Exit(1)
	}

	mgrOpts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        "redpacket-operator.redpacket.dev",
		LeaderElectionNamespace: *leaderElectNS,
	}
	mgrOpts.Cache.SyncPeriod = syncPeriod
	mgrOpts.Cache.ByObject = controllers.CacheByObject()
	// /readyz fails while the informers cannot list or watch, instead of answering 200 for a
	// manager that reconciles nothing.
	caches := controllers.NewCacheHealth()
	mgrOpts.Cache.DefaultWatchErrorHandler = caches.WatchErrorHandler
	if *watchNamespace != "" {
		mgrOpts.Cache.DefaultNamespaces = map[string]cache.Config{*watchNamespace: {}}
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), mgrOpts)
	if err != nil {
		log.Error(err, "create manager")
		os.Exit(1)
	}
	if err := controllers.Setup(mgr); err != nil {
		log.Error(err, "set up controllers")
		os.Exit(1)
	}
	// Status as gauges for the alerts and the dashboard (docs/operator.md, monitoring).
	if err := metrics.Registry.Register(opmetrics.New(mgr.GetClient(), slog.New(slog.NewJSONHandler(os.Stderr, nil)))); err != nil {
		log.Error(err, "register status metrics")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "add health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "add ready check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("caches", caches.Checker(mgr.GetCache())); err != nil {
		log.Error(err, "add cache ready check")
		os.Exit(1)
	}
	log.Info("starting operator", "leaderElection", *leaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "run manager")
		os.Exit(1)
	}
}
