package cpustat

import "testing"

func TestBusyBetweenSamples(t *testing.T) {
	a, b := Sample{busy: 100, total: 400}, Sample{busy: 250, total: 700}
	if got := Busy(a, b); got != 0.5 {
		t.Fatalf("Busy = %v, want 0.5", got)
	}
	if got := Busy(b, a); got != 0 {
		t.Fatalf("Busy backwards = %v, want 0", got)
	}
}

func TestReadOnLinux(t *testing.T) {
	s := Read()
	if s.total == 0 || s.busy > s.total {
		t.Fatalf("implausible sample %+v", s)
	}
}
