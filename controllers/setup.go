package controllers

import (
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Setup registers both reconcilers with a manager.
func Setup(mgr ctrl.Manager) error {
	set := &SetReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketset-controller")}
	if err := set.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketset controller: %w", err)
	}
	cell := &CellReconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("redpacketcell-controller")}
	if err := cell.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up redpacketcell controller: %w", err)
	}
	return nil
}
