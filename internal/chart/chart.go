// Package chart draws the project's benchmark charts (docs/*.png): measures against the
// concurrency levels they were measured at, x logarithmic with a tick at every level and no
// other. It is the one place that decides how a benchmark chart looks, so the lock-strategy
// chart (rpbench locks) and the festival sweep (rpbench -sweep) read alike.
package chart

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Point is one measure at one concurrency level.
type Point struct {
	Level int
	Value float64
}

// Line is one series of a panel.
type Line struct {
	Label  string // shown in the legend when the panel has one
	Color  color.RGBA
	Points []Point
}

// Panel is one plot: lines against the levels.
type Panel struct {
	Title, XLabel, YLabel string
	Levels                []int // the x ticks: the levels measured
	Lines                 []Line
	// LogY draws y logarithmic; values below 1 are drawn at 1 (a log axis cannot show 0).
	LogY bool
	// YMin and YMax fix the y range when YMax > 0; otherwise y starts at 0 (linear) or
	// fits the data (log).
	YMin, YMax float64
	// Legend places the lines' labels in the top-left corner.
	Legend bool
}

// WritePNG draws the panels one above the other into a PNG of the given size.
func WritePNG(path string, width, height vg.Length, panels ...Panel) error {
	if len(panels) == 0 {
		return fmt.Errorf("chart %s: no panels", path)
	}
	plots := make([][]*plot.Plot, len(panels))
	for i, pn := range panels {
		p, err := pn.plot()
		if err != nil {
			return fmt.Errorf("chart %s: %w", path, err)
		}
		plots[i] = []*plot.Plot{p}
	}
	img := vgimg.New(width, height)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadY: vg.Points(12), PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12)}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return f.Close()
}

func (pn Panel) plot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.Title
	p.X.Label.Text = pn.XLabel
	p.Y.Label.Text = pn.YLabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = levelTicks(pn.Levels)
	if pn.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	} else {
		p.Y.Min = 0
	}
	if pn.Legend {
		p.Legend.Top, p.Legend.Left = true, true
	}
	p.Add(plotter.NewGrid())
	for _, l := range pn.Lines {
		if len(l.Points) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(l.Points))
		for i, pt := range l.Points {
			y := pt.Value
			if pn.LogY {
				y = max(y, 1)
			}
			xys[i] = plotter.XY{X: float64(pt.Level), Y: y}
		}
		line, marks, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		line.Color, marks.Color, line.Width = l.Color, l.Color, vg.Points(2)
		marks.Shape = draw.CircleGlyph{}
		p.Add(line, marks)
		if pn.Legend && l.Label != "" {
			p.Legend.Add(l.Label, line, marks)
		}
	}
	if pn.YMax > 0 {
		p.Y.Min, p.Y.Max = pn.YMin, pn.YMax
	}
	return p, nil
}

// levelTicks labels exactly the levels measured: a log axis's own ticks would fall between
// them.
type levelTicks []int

func (l levelTicks) Ticks(_, _ float64) []plot.Tick {
	out := make([]plot.Tick, 0, len(l))
	for _, v := range l {
		out = append(out, plot.Tick{Value: float64(v), Label: fmt.Sprint(v)})
	}
	return out
}
