package chart

import (
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/plot/vg"
)

func TestWritePNGPanels(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.png")
	levels := []int{16, 64, 256}
	line := Line{Label: "a", Color: color.RGBA{200, 40, 40, 255}, Points: []Point{{16, 0}, {64, 50}, {256, 900}}}
	err := WritePNG(path, 6*vg.Inch, 6*vg.Inch,
		Panel{Title: "linear", Levels: levels, Lines: []Line{line}},
		// A log axis cannot show 0: the first point must be drawn at 1, not fail the chart.
		Panel{Title: "log", Levels: levels, Lines: []Line{line, {Label: "empty"}}, LogY: true, Legend: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 400 {
		t.Errorf("image %v, want 6×6 inches", b)
	}
	if ticks := levelTicks(levels).Ticks(1, 1000); len(ticks) != 3 || ticks[2].Label != "256" {
		t.Errorf("ticks %+v, want one per level", ticks)
	}
	if err := WritePNG(path, vg.Inch, vg.Inch); err == nil {
		t.Error("a chart without panels was written")
	}
}
