package main

import (
	"context"
	"fmt"
	"image/color"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot/vg"

	"github.com/redpacketset/redpacket/internal/chart"
	"github.com/redpacketset/redpacket/internal/cpustat"
	"github.com/redpacketset/redpacket/internal/loadgen"
)

// sweepPoint is one concurrency level of a sweep.
type sweepPoint struct {
	Concurrency int
	OpensPerSec float64
	P99Open     time.Duration
	Errors      int64
	MachineCPU  float64
	Load        string // the 1-minute load average when the level ended
}

func parseLevels(v string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-sweep %q: want positive concurrency levels like 16,32,64", v)
		}
		out = append(out, n)
	}
	return out, nil
}

// sweep runs the festival mix once per concurrency level, prints a table and, when chart is
// set, draws opens/s and p99 open latency against the offered load, so the knee shows.
func sweep(ctx context.Context, cfg loadgen.Config, levels []int, chartPath string, w io.Writer) ([]*loadgen.Result, error) {
	var pts []sweepPoint
	var results []*loadgen.Result
	loadBefore := cpustat.LoadAvg()
	for _, c := range levels {
		lc := levelConfig(cfg, c)
		fmt.Fprintf(os.Stderr, "rpbench: sweep: %d members tapping at once for %s…\n", c, cfg.Duration)
		c0 := cpustat.Read()
		res, err := loadgen.Run(ctx, lc)
		if err != nil {
			return results, fmt.Errorf("sweep at concurrency %d: %w", c, err)
		}
		pt := sweepPoint{Concurrency: c, OpensPerSec: res.OpensPerSec, Errors: res.Errors, MachineCPU: cpustat.Busy(c0, cpustat.Read()),
			Load: strings.Fields(cpustat.LoadAvg() + " ")[0]}
		for _, v := range res.Verbs {
			if v.Verb == loadgen.VerbOpen {
				pt.P99Open = v.P99
			}
		}
		pts = append(pts, pt)
		results = append(results, res)
		if ctx.Err() != nil {
			break
		}
	}
	loadAfter := cpustat.LoadAvg()
	fmt.Fprintf(w, "\nfestival mix against offered load (%d CPUs, %s per level, load average %s → %s):\n", runtime.NumCPU(), cfg.Duration, loadBefore, loadAfter)
	fmt.Fprintf(w, "%12s %10s %10s %8s %6s %6s\n", "concurrency", "opens/s", "p99 open", "errors", "cpu%", "load")
	for _, p := range pts {
		fmt.Fprintf(w, "%12d %10.0f %10s %8d %6.0f %6s\n", p.Concurrency, p.OpensPerSec, ms(p.P99Open), p.Errors, p.MachineCPU*100, p.Load)
	}
	for _, r := range results {
		for i, e := range r.ErrorSamples {
			if i == 0 {
				fmt.Fprintf(w, "first unexpected answers at concurrency %d:\n", r.Config.Concurrency)
			}
			if i == 3 {
				break
			}
			fmt.Fprintln(w, "  "+e)
		}
	}
	if chartPath != "" {
		note := fmt.Sprintf("%d CPUs, load %s → %s, %s per level", runtime.NumCPU(),
			strings.Fields(loadBefore + " ")[0], strings.Fields(loadAfter + " ")[0], cfg.Duration)
		if err := sweepPNG(chartPath, pts, note); err != nil {
			return results, fmt.Errorf("chart %s: %w", chartPath, err)
		}
		fmt.Fprintln(w, "chart:", chartPath)
	}
	return results, nil
}

// levelConfig is the run at one concurrency level. Each level gets a run ID of its own: the
// wrap request IDs and payment txns are built from it, and a level reusing the previous one's
// would have its wraps answered with the earlier level's packets (idempotent, as they must be)
// and its pays refused as conflicts — errors of the tool, not of the SET. The packet pool and
// the HTTP client are sized for the level's concurrency, as a single run at it would be.
func levelConfig(cfg loadgen.Config, concurrency int) loadgen.Config {
	cfg.Concurrency = concurrency
	cfg.Progress = nil
	cfg.RunID = fmt.Sprintf("%s-c%d", cfg.RunID, concurrency)
	cfg.Pool, cfg.Client = 0, nil
	return cfg.WithDefaults()
}

func sweepPNG(path string, pts []sweepPoint, note string) error {
	var levels []int
	rate := chart.Line{Color: color.RGBA{20, 150, 60, 255}}
	p99 := chart.Line{Color: color.RGBA{200, 40, 40, 255}}
	for _, p := range pts {
		levels = append(levels, p.Concurrency)
		rate.Points = append(rate.Points, chart.Point{Level: p.Concurrency, Value: p.OpensPerSec})
		p99.Points = append(p99.Points, chart.Point{Level: p.Concurrency, Value: float64(p.P99Open.Microseconds()) / 1000})
	}
	const x = "members tapping at once (offered load)"
	return chart.WritePNG(path, 9*vg.Inch, 8*vg.Inch,
		chart.Panel{Title: "Festival mix through the gateway: paid opens/s (" + note + ")", XLabel: x, YLabel: "paid opens/s", Levels: levels, Lines: []chart.Line{rate}},
		chart.Panel{Title: "p99 open latency", XLabel: x, YLabel: "p99 open (ms)", Levels: levels, Lines: []chart.Line{p99}})
}
