// Package cpustat reads machine-wide CPU use from /proc/stat. Benchmarks here report it next to
// throughput because MariaDB, the server code and the load generator share the same few cores,
// so the machine figure, not the process's, says how close a run came to the ceiling.
package cpustat

import (
	"os"
	"strconv"
	"strings"
)

// Sample is a reading of the machine's CPU counters (zero where /proc/stat is unavailable).
type Sample struct{ busy, total uint64 }

// Read takes a sample.
func Read() Sample {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return Sample{}
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return Sample{}
	}
	var s Sample
	for i, v := range fields[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s
}

// Busy is the fraction of CPU time the machine spent busy between two samples.
func Busy(a, b Sample) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}

// Model is the CPU model name, for reports.
func Model() string {
	raw, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// LoadAvg is the 1, 5 and 15 minute load averages ("3.12 2.80 2.41"), or "unknown": on a
// machine shared with other work it says more about a run's figures than the busy share,
// which is 100% as soon as anyone saturates it.
func LoadAvg() string {
	raw, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
