package loadgen

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// Verbs the workload issues, in report order.
var Verbs = []string{VerbWrap, VerbPay, VerbGrab, VerbOpen, VerbDetails, VerbHistory}

const (
	VerbWrap    = "wrap"
	VerbPay     = "pay"
	VerbGrab    = "grab"
	VerbOpen    = "open"
	VerbDetails = "details"
	VerbHistory = "history"
)

// Percentile is the nearest-rank q-quantile (0 < q ≤ 1) of sorted samples: the smallest
// sample with at least q of all samples at or below it. Zero for no samples.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(q*float64(n)+0.999999999) - 1 // ⌈q·n⌉ - 1, robust to float noise
	return sorted[min(max(rank, 0), n-1)]
}

// recorder is one worker's private tally; workers never share one, so recording costs no lock.
type recorder struct {
	lat   map[string][]time.Duration
	codes map[string]map[string]int64 // verb → outcome ("200", "409 exhausted", "transport") → n
}

func newRecorder() *recorder {
	r := &recorder{lat: map[string][]time.Duration{}, codes: map[string]map[string]int64{}}
	for _, v := range Verbs {
		r.lat[v] = make([]time.Duration, 0, 1024)
		r.codes[v] = map[string]int64{}
	}
	return r
}

func (r *recorder) record(verb, outcome string, d time.Duration) {
	r.lat[verb] = append(r.lat[verb], d)
	r.codes[verb][outcome]++
}

// VerbReport is one verb's line in the report.
type VerbReport struct {
	Verb     string
	Requests int64
	P50      time.Duration
	P99      time.Duration
	P999     time.Duration
	Max      time.Duration
	Outcomes map[string]int64 // "200", "409 exhausted", "429 overloaded", "transport", …
}

func merge(rs []*recorder) []VerbReport {
	var out []VerbReport
	for _, v := range Verbs {
		var lat []time.Duration
		outcomes := map[string]int64{}
		for _, r := range rs {
			lat = append(lat, r.lat[v]...)
			for k, n := range r.codes[v] {
				outcomes[k] += n
			}
		}
		if len(lat) == 0 {
			continue
		}
		slices.Sort(lat)
		out = append(out, VerbReport{Verb: v, Requests: int64(len(lat)), P50: Percentile(lat, 0.50),
			P99: Percentile(lat, 0.99), P999: Percentile(lat, 0.999), Max: lat[len(lat)-1], Outcomes: outcomes})
	}
	return out
}

// SortedOutcomes lists outcomes by count, largest first, as "outcome×n".
func (v VerbReport) SortedOutcomes() []string {
	keys := make([]string, 0, len(v.Outcomes))
	for k := range v.Outcomes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if v.Outcomes[keys[i]] != v.Outcomes[keys[j]] {
			return v.Outcomes[keys[i]] > v.Outcomes[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s×%d", k, v.Outcomes[k])
	}
	return out
}
