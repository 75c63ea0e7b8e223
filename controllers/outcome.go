package controllers

import (
	"context"
	"errors"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// conflictRetry is how soon a reconcile that lost a write race runs again. The newer object's
// watch event usually wakes it first; this is the safety net.
const conflictRetry = time.Second

// quietConflict turns a write conflict into a requeue. A conflict only means another writer
// (or this operator's previous pass, not yet in the cache) changed the object first; reported
// as an error it would be logged as "Reconciler error" and counted as result="error", drowning
// the errors an SRE must act on. Any other error is passed on as is.
func quietConflict(ctx context.Context, res ctrl.Result, err error) (ctrl.Result, error) {
	if err == nil || !isOnlyConflict(err) {
		return res, err
	}
	log.FromContext(ctx).V(1).Info("write conflict, reconciling again", "err", err.Error())
	return ctrl.Result{RequeueAfter: conflictRetry}, nil
}

// isOnlyConflict reports whether every error joined or wrapped in err is a conflict: a
// conflict beside a real failure is still a failure.
func isOnlyConflict(err error) bool {
	switch e := err.(type) {
	case interface{ Unwrap() []error }:
		errs := e.Unwrap()
		for _, inner := range errs {
			if inner != nil && !isOnlyConflict(inner) {
				return false
			}
		}
		return len(errs) > 0
	case apierrors.APIStatus:
		return apierrors.IsConflict(err)
	}
	if u := errors.Unwrap(err); u != nil {
		return isOnlyConflict(u)
	}
	return false
}

// describeApply names an apply configuration's object, e.g. "StatefulSet ns/rp-cell-0-mysql".
func describeApply(obj runtime.ApplyConfiguration) string {
	kind, ns, name := "object", "", "?"
	if o, ok := obj.(interface{ GetKind() *string }); ok && o.GetKind() != nil {
		kind = *o.GetKind()
	}
	if o, ok := obj.(interface{ GetNamespace() *string }); ok && o.GetNamespace() != nil {
		ns = *o.GetNamespace() + "/"
	}
	if o, ok := obj.(interface{ GetName() *string }); ok && o.GetName() != nil {
		name = *o.GetName()
	}
	return kind + " " + ns + name
}
