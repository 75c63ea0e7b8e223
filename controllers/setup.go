package controllers

import (
	"fmt"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Options tune the reconcilers; the zero value is what production runs.
type Options struct {
	// OpenCellDB opens a cell's database (nil: dial the cell's MySQL Service).
	OpenCellDB CellDBOpener
	// MaskPoll is how often a ready cell's error counts are read (0: 10 s).
	MaskPoll time.Duration
	// Now is the reconcilers' clock (nil: time.Now); tests move it past expiry windows.
	Now func() time.Time
	// CellDBTimeout bounds one pass of calls to a cell's database (0: 5 s).
	CellDBTimeout time.Duration
	// DatabaseAddr reaches a replicated cell's database instances (nil: its pods through the
	// headless Service); tests point it at local MariaDB instances.
	DatabaseAddr DatabaseAddr
	// CellWorkers and SetWorkers are how many cells and sets reconcile at once (0: 4 and 2).
	CellWorkers, SetWorkers int
}

const (
	defaultCellWorkers = 4
	defaultSetWorkers  = 2
)

func workersOr(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// Setup registers both reconcilers with a manager.
func Setup(mgr ctrl.Manager, opts ...Options) error {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	// One pool per cell database, shared: the cell reconciler reads error counts and writes
	// masks, the set reconciler checks a retiring cell for unsettled packets.
	dbs := &cellDBs{open: o.OpenCellDB, timeout: o.CellDBTimeout}
	set := &SetReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketset-controller"), Now: o.Now, Workers: o.SetWorkers, dbs: dbs}
	if err := set.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketset controller: %w", err)
	}
	cell := &CellReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketcell-controller"), MaskPoll: o.MaskPoll, Now: o.Now, Workers: o.CellWorkers, dbs: dbs,
		APIReader: mgr.GetAPIReader(), DatabaseAddr: o.DatabaseAddr}
	if err := cell.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketcell controller: %w", err)
	}
	return nil
}
