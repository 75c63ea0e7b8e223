// Package localset runs a complete RedPacket SET on one machine from a RedPacketSet manifest:
// per cell its own MariaDB (own datadir and port, durable settings) and memcached and N cell
// server processes, plus the gateway, wired by the same routing table and signing key the
// operator would publish. It sizes cells with the operator's planner (controllers/plan), so
// the local SET and the Kubernetes one have the same shape, only smaller.
//
// Everything lives under one data directory: state.json (the ports, stable across restarts),
// routing.json, signing.key, bin/ (the built binaries), cells/<cell>/mysql (the datadir, never
// re-initialised once complete) and logs/. Starting again on the same directory keeps the
// data.
//
// This package owns process orchestration only. It must never touch a money table itself,
// never start anything on a non-loopback address, and never use the machine's default
// MariaDB or memcached instances.
package localset

import (
	"errors"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/yaml"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/controllers/plan"
	"github.com/redpacketset/redpacket/controllers/setplan"
)

// DefaultManifest is the sample the README's first command runs.
const DefaultManifest = "config/samples/redpacket_v1alpha1_redpacketset.yaml"

// LoadManifest reads a RedPacketSet manifest and applies the CRD's defaults to empty fields,
// as the API server would before the operator sees the object.
func LoadManifest(path string) (*rpv1.RedPacketSet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	set, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return set, nil
}

// ParseManifest decodes one RedPacketSet (unknown fields are refused, so a typo never silently
// falls back to a default), applies defaults and validates what the planner needs.
func ParseManifest(data []byte) (*rpv1.RedPacketSet, error) {
	var set rpv1.RedPacketSet
	if err := yaml.UnmarshalStrict(data, &set); err != nil {
		return nil, fmt.Errorf("decode RedPacketSet: %w", err)
	}
	if set.Kind != "" && set.Kind != "RedPacketSet" {
		return nil, fmt.Errorf("kind %q, want RedPacketSet", set.Kind)
	}
	ApplyDefaults(&set)
	if err := validate(&set); err != nil {
		return nil, err
	}
	return &set, nil
}

// ApplyDefaults fills every empty field with the default the CRD declares
// (+kubebuilder:default markers in api/v1alpha1).
func ApplyDefaults(set *rpv1.RedPacketSet) {
	s := &set.Spec
	if set.Name == "" {
		set.Name = "local"
	}
	if s.Cells == 0 {
		s.Cells = 1
	}
	if s.SlotCount == 0 {
		s.SlotCount = 1000
	}
	if s.Capacity.MinServersPerZone == 0 {
		s.Capacity.MinServersPerZone = 1
	}
	if s.RebalanceDelay == nil {
		s.RebalanceDelay = &rpv1.Duration{Duration: 2 * time.Minute}
	}
	t := &s.Template
	if t.Server.Image == "" {
		t.Server.Image = "ghcr.io/redpacketset/cellserver:v0.1.0"
	}
	if t.MySQL.Image == "" {
		t.MySQL.Image = "mariadb:10.11"
	}
	if t.MySQL.Replicas == 0 {
		t.MySQL.Replicas = 1
	}
	if t.Memcached.Image == "" {
		t.Memcached.Image = "memcached:1.6"
	}
	if t.Memcached.MemoryMB == 0 {
		t.Memcached.MemoryMB = 64
	}
	if t.Queue.Workers == 0 {
		t.Queue.Workers = 64
	}
	if t.Queue.Depth == 0 {
		t.Queue.Depth = 1024
	}
	if t.Queue.BatchMax == 0 {
		t.Queue.BatchMax = 128
	}
	if t.Guard.Limit == 0 {
		t.Guard.Limit = 4
	}
	if t.Shards.Databases == 0 {
		t.Shards.Databases = 100
	}
	if t.Shards.TablesPerDatabase == 0 {
		t.Shards.TablesPerDatabase = 10
	}
	m := &s.Masking
	if m.ErrorThreshold == 0 {
		m.ErrorThreshold = 50
	}
	if m.Window == nil {
		m.Window = &rpv1.Duration{Duration: time.Minute}
	}
	if m.CoolDown == nil {
		m.CoolDown = &rpv1.Duration{Duration: 5 * time.Minute}
	}
	if m.MaxMaskedPercent == 0 {
		m.MaxMaskedPercent = 10
	}
	l := &s.Limits
	if l.MaxTotalCents == 0 {
		l.MaxTotalCents = 20000
	}
	if l.MaxCount == 0 {
		l.MaxCount = 100
	}
	if l.Expiry == nil {
		l.Expiry = &rpv1.Duration{Duration: 24 * time.Hour}
	}
	if s.Gateway.Replicas == 0 {
		s.Gateway.Replicas = 2
	}
}

// validate checks what the CRD's schema would refuse and the planner does not check itself.
func validate(set *rpv1.RedPacketSet) error {
	s := &set.Spec
	if errs := s.StoredValueErrors(); len(errs) > 0 {
		return errors.Join(errs...) // durations decode leniently (rpv1.Duration); refuse them here
	}
	switch {
	case s.Capacity.PeakOpensPerSecond < 1:
		return errors.New("spec.capacity.peakOpensPerSecond: must be at least 1")
	case s.Capacity.PerServerOpensPerSecond < 1:
		return errors.New("spec.capacity.perServerOpensPerSecond: must be at least 1")
	case s.Region < 0 || s.Region > 3:
		return fmt.Errorf("spec.region: %d outside 0..3", s.Region)
	case s.Template.Shards.Databases > 100 || s.Template.Shards.TablesPerDatabase > 10:
		return fmt.Errorf("spec.template.shards: %d×%d exceeds 100×10", s.Template.Shards.Databases, s.Template.Shards.TablesPerDatabase)
	case s.Limits.MaxTotalCents < int64(s.Limits.MaxCount):
		return errors.New("spec.limits.maxTotalCents must be at least spec.limits.maxCount: every share is at least one cent")
	}
	if _, err := plan.Compute(setplan.PlanInput(set)); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}
