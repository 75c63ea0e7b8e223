package v1alpha1

import (
	"encoding/json"
	"fmt"
	"time"
)

// DurationPattern is the text of a Go duration (time.ParseDuration): a sign, then one or more
// decimal numbers each with a unit. The CRD refuses anything else at admission.
const DurationPattern = `^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$`

// Duration is a span written as a Go duration ("90s", "2m", "24h"), like metav1.Duration, but
// its decoding never fails. A value stored before the CRD refused it (or written with
// validation bypassed) decodes with Invalid holding the stored text, so the manager's caches
// can still list every object: one bad set gets a condition naming the field instead of
// stopping every set of the cluster from being reconciled. Encoding writes the stored text
// back unchanged, so an update of an object never loses what the user wrote. The CEL rules on
// durations only evaluate values that match the pattern: a rule that errors on a stored value
// would refuse every later write of the object, its status included (the pattern's own
// refusal is ratcheted for a value the write leaves unchanged).
// +kubebuilder:validation:Type=string
// +kubebuilder:validation:Pattern=`^[-+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$`
// +kubebuilder:validation:MaxLength=64
type Duration struct {
	time.Duration `json:"-"`
	// Invalid is the stored JSON when it is not a duration ("" for a valid one).
	Invalid string `json:"-"`
}

// UnmarshalJSON accepts any JSON value; what does not parse as a duration is kept, as the JSON
// it was stored as, in Invalid.
func (d *Duration) UnmarshalJSON(b []byte) error {
	*d = Duration{}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if v, err := time.ParseDuration(s); err == nil {
			d.Duration = v
			return nil
		}
	}
	d.Invalid = string(b)
	return nil
}

// MarshalJSON writes a valid duration in Go's form, an invalid one as it was stored.
func (d Duration) MarshalJSON() ([]byte, error) {
	if d.Invalid != "" {
		return []byte(d.Invalid), nil
	}
	return json.Marshal(d.Duration.String())
}

// ToUnstructured keeps the unstructured converter (server-side apply of cells) writing the
// string form rather than a struct.
func (d Duration) ToUnstructured() any {
	if d.Invalid != "" {
		var v any
		if err := json.Unmarshal([]byte(d.Invalid), &v); err == nil {
			return v
		}
		return d.Invalid
	}
	return d.Duration.String()
}

// Err says why a stored value is not a duration, naming the field; nil for a valid or unset one.
func (d *Duration) Err(field string) error {
	if d == nil || d.Invalid == "" {
		return nil
	}
	return fmt.Errorf("%s: %s is not a duration (write it as Go does, e.g. 90s, 2m or 24h)", field, d.Invalid)
}

// StoredValueErrors lists the fields of a stored set whose values the API server would refuse
// today but which decoded anyway (see Duration). The operator reports them in a condition and
// plans nothing from them.
func (s *RedPacketSetSpec) StoredValueErrors() []error {
	return nonNil(
		s.RebalanceDelay.Err("spec.rebalanceDelay"),
		s.Masking.Window.Err("spec.masking.window"),
		s.Masking.CoolDown.Err("spec.masking.coolDown"),
		s.Limits.Expiry.Err("spec.limits.expiry"),
	)
}

// StoredValueErrors is the cell's counterpart of RedPacketSetSpec.StoredValueErrors.
func (s *RedPacketCellSpec) StoredValueErrors() []error {
	return nonNil(
		s.Masking.Window.Err("spec.masking.window"),
		s.Masking.CoolDown.Err("spec.masking.coolDown"),
		s.Limits.Expiry.Err("spec.limits.expiry"),
	)
}

func nonNil(errs ...error) []error {
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}
