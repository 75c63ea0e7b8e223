package main

import (
	"context"
	"fmt"
	"image/color"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

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
func sweep(ctx context.Context, cfg loadgen.Config, levels []int, chart string, w io.Writer) ([]*loadgen.Result, error) {
	var pts []sweepPoint
	var results []*loadgen.Result
	for _, c := range levels {
		lc := levelConfig(cfg, c)
		fmt.Fprintf(os.Stderr, "rpbench: sweep: %d members tapping at once for %s…\n", c, cfg.Duration)
		c0 := cpustat.Read()
		res, err := loadgen.Run(ctx, lc)
		if err != nil {
			return results, fmt.Errorf("sweep at concurrency %d: %w", c, err)
		}
		pt := sweepPoint{Concurrency: c, OpensPerSec: res.OpensPerSec, Errors: res.Errors, MachineCPU: cpustat.Busy(c0, cpustat.Read())}
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
	fmt.Fprintln(w, "\nfestival mix against offered load:")
	fmt.Fprintf(w, "%12s %10s %10s %8s %6s\n", "concurrency", "opens/s", "p99 open", "errors", "cpu%")
	for _, p := range pts {
		fmt.Fprintf(w, "%12d %10.0f %10s %8d %6.0f\n", p.Concurrency, p.OpensPerSec, ms(p.P99Open), p.Errors, p.MachineCPU*100)
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
	if chart != "" {
		if err := sweepPNG(chart, pts); err != nil {
			return results, fmt.Errorf("chart %s: %w", chart, err)
		}
		fmt.Fprintln(w, "chart:", chart)
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

func sweepPNG(path string, pts []sweepPoint) error {
	var rate, p99 plotter.XYs
	var levels []int
	for _, p := range pts {
		levels = append(levels, p.Concurrency)
		rate = append(rate, plotter.XY{X: float64(p.Concurrency), Y: p.OpensPerSec})
		p99 = append(p99, plotter.XY{X: float64(p.Concurrency), Y: float64(p.P99Open.Microseconds()) / 1000})
	}
	mk := func(title, ylabel string, xys plotter.XYs, c color.RGBA) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "members tapping at once (offered load)"
		p.Y.Label.Text = ylabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = levelTicks(levels)
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		line, marks, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		line.Color, marks.Color, line.Width = c, c, vg.Points(2)
		marks.Shape = draw.CircleGlyph{}
		p.Add(line, marks)
		return p, nil
	}
	a, err := mk("Festival mix through the gateway: opens/s", "paid opens/s", rate, color.RGBA{20, 150, 60, 255})
	if err != nil {
		return err
	}
	b, err := mk("p99 open latency", "p99 open (ms)", p99, color.RGBA{200, 40, 40, 255})
	if err != nil {
		return err
	}
	img := vgimg.New(9*vg.Inch, 8*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Points(12), PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12)}
	canvases := plot.Align([][]*plot.Plot{{a}, {b}}, tiles, dc)
	a.Draw(canvases[0][0])
	b.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// levelTicks labels exactly the levels measured.
type levelTicks []int

func (l levelTicks) Ticks(_, _ float64) []plot.Tick {
	out := make([]plot.Tick, 0, len(l))
	for _, v := range l {
		out = append(out, plot.Tick{Value: float64(v), Label: strconv.Itoa(v)})
	}
	return out
}
