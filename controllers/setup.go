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
}

// Setup registers both reconcilers with a manager.
func Setup(mgr ctrl.Manager, opts ...Options) error {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	set := &SetReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketset-controller")}
	if err := set.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketset controller: %w", err)
	}
	cell := &CellReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketcell-controller"), OpenDB: o.OpenCellDB, MaskPoll: o.MaskPoll}
	if err := cell.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketcell controller: %w", err)
	}
	return nil
}
