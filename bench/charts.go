package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// panel is one bar chart: groups along the x axis, one bar per series in
// each group (the median, with a min-max error bar), each bar labelled
// with its value and, when ratio says so, its ratio to a reference.
type panel struct {
	title, unit    string
	groups, series []string
	get            func(group, series string) *measurement
	// ratio labels a bar with its ratio to a reference; "" for none.
	ratio func(group, series string) string
}

// seriesColors keeps a contender's colour the same on every chart.
var seriesColors = map[string]color.Color{
	cLimit:                    color.RGBA{150, 150, 150, 255},
	cDocker:                   color.RGBA{230, 140, 40, 255},
	cPodpath:                  color.RGBA{40, 110, 200, 255},
	cniBridge:                 color.RGBA{230, 140, 40, 255},
	cniPodpath:                color.RGBA{40, 110, 200, 255},
	cIptables:                 color.RGBA{230, 140, 40, 255},
	cNftables:                 color.RGBA{200, 70, 70, 255},
	cIptables + posMid.suffix: color.RGBA{245, 195, 130, 255},
	cNftables + posMid.suffix: color.RGBA{230, 150, 150, 255},
	cPodpath + posMid.suffix:  color.RGBA{130, 175, 230, 255},
	cpKPIptables:              color.RGBA{230, 140, 40, 255},
	cpKPNftables:              color.RGBA{200, 70, 70, 255},
	cHostGW:                   color.RGBA{230, 140, 40, 255},
	cFlannelVXLAN:             color.RGBA{200, 70, 70, 255},
	cPodpathDirect:            color.RGBA{40, 110, 200, 255},
	cPodpathVXLAN:             color.RGBA{110, 170, 230, 255},
	cVethFloor:                color.RGBA{140, 140, 140, 255},
}

var fallbackColors = []color.Color{
	color.RGBA{40, 110, 200, 255}, color.RGBA{90, 170, 90, 255},
	color.RGBA{200, 70, 70, 255}, color.RGBA{140, 100, 180, 255},
	color.RGBA{230, 140, 40, 255}, color.RGBA{40, 40, 40, 255},
}

func colorOf(series string, i int) color.Color {
	if c, ok := seriesColors[series]; ok {
		return c
	}
	return fallbackColors[i%len(fallbackColors)]
}

// drawCharts writes one PNG per measured family.
func drawCharts(r *results, dir string) error {
	for _, fam := range allFamilies() {
		var panels []chartPanel
		switch fam {
		case famServices:
			panels = servicePanels(r)
		case famSoak:
			panels = soakPanels(r)
		default:
			for _, p := range familyPanels(r, fam) {
				panels = append(panels, p)
			}
		}
		if len(panels) == 0 {
			continue
		}
		// Memory has many maps: its panels are stacked, full width.
		if err := savePanels(filepath.Join(dir, fam+".png"), familyTitles[fam], panels, fam == famMemory); err != nil {
			return fmt.Errorf("%s: %w", fam, err)
		}
	}
	return nil
}

// familyPanels lays out a family's chart.
func familyPanels(r *results, fam string) []panel {
	ms := r.family(fam)
	if len(ms) == 0 {
		return nil
	}
	contenders := uniq(ms, func(m *measurement) string { return m.Contender })
	get := func(g, s string) *measurement { return r.find(fam, g, s) }
	vsRef := func(ref string) func(g, s string) string {
		short, _, _ := strings.Cut(ref, "+")
		return func(g, s string) string {
			m, base := get(g, s), get(g, ref)
			if s == ref || m == nil || base == nil || base.Median == 0 {
				return ""
			}
			return fmt.Sprintf("%.2fx %s", m.Median/base.Median, short)
		}
	}
	switch fam {
	case famStream:
		return []panel{{title: "throughput (higher is better)", unit: "Gbit/s", groups: []string{"throughput"}, series: contenders, get: get, ratio: vsRef(cDocker)}}
	case famRR, famCRR:
		rate := "transactions/s"
		if fam == famCRR {
			rate = "connections/s"
		}
		return []panel{
			{title: "rate (higher is better)", unit: rate, groups: []string{"rate"}, series: contenders, get: get, ratio: vsRef(cDocker)},
			{title: "latency (lower is better)", unit: "µs", groups: []string{"p50", "p99"}, series: contenders, get: get, ratio: vsRef(cDocker)},
		}
	case famProgRun:
		// One series; the groups are the program paths.
		return []panel{{
			title: "ns per packet (lower is better)", unit: "ns", groups: contenders, series: []string{"ns_per_packet"},
			get: func(g, s string) *measurement { return r.find(fam, s, g) },
			ratio: func(g, s string) string {
				m := r.find(fam, s, g)
				if base := baseline(r, m); base != nil && base.Median > 0 {
					return fmt.Sprintf("%.1fx no-op", m.Median/base.Median)
				}
				return ""
			},
		}}
	case famCNI:
		return []panel{
			{title: "ADD latency (lower is better)", unit: "ms", groups: []string{"add_seq_p50", "add_seq_p99", "add_par_p50", "add_par_p99"}, series: contenders, get: get, ratio: vsRef(cniBridge)},
			{title: "DEL latency (lower is better)", unit: "ms", groups: []string{"del_seq_p50", "del_seq_p99", "del_par_p50", "del_par_p99"}, series: contenders, get: get, ratio: vsRef(cniBridge)},
		}
	case famSNAT:
		return []panel{
			{title: "throughput (higher is better)", unit: "Gbit/s", groups: []string{"throughput"}, series: contenders, get: get, ratio: vsRef(cIptables)},
			{title: "TCP_RR (higher is better)", unit: "transactions/s", groups: []string{"rr_rate"}, series: contenders, get: get, ratio: vsRef(cIptables)},
			{title: "TCP_CRR (higher is better)", unit: "connections/s", groups: []string{"crr_rate"}, series: contenders, get: get, ratio: vsRef(cIptables)},
		}
	case famPolicy:
		return []panel{
			{title: "TCP_RR (higher is better)", unit: "transactions/s", groups: []string{"rr_rate"}, series: contenders, get: get, ratio: vsRef(cPodpath)},
			{title: "TCP_CRR (higher is better)", unit: "connections/s", groups: []string{"crr_rate"}, series: contenders, get: get, ratio: vsRef(cPodpath)},
			{title: "programming 1,000 policies (lower is better)", unit: "ms", groups: []string{"program_all", "program_all_compile", "program_all_apply", "program_one_change"}, series: []string{cPodpathPolicy}, get: get},
		}
	case famControlPlane:
		return controlPlanePanels(r)
	case famCrossNode:
		return crossNodePanels(r)
	case famMemory:
		var parts, totals []string
		for _, g := range uniq(ms, func(m *measurement) string { return m.Metric }) {
			if strings.HasPrefix(g, "total") || strings.HasSuffix(g, "(full)") {
				totals = append(totals, g)
			} else {
				parts = append(parts, g)
			}
		}
		return []panel{
			{title: "each map and program, endpoints map empty", unit: "MiB", groups: parts, series: contenders, get: get},
			{title: "endpoints map filled to capacity, and totals", unit: "MiB", groups: totals, series: contenders, get: get},
		}
	}
	return nil
}

func uniq(ms []*measurement, key func(*measurement) string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range ms {
		if k := key(m); !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// chartPanel is one panel of a chart.
type chartPanel interface {
	plot(panelW vg.Length) (*plot.Plot, error)
}

// savePanels draws panels side by side into one PNG.
func savePanels(path, title string, panels []chartPanel, stacked bool) error {
	panelW, h := 7*vg.Inch, 5*vg.Inch
	width := panelW * vg.Length(len(panels))
	rows, cols := 1, len(panels)
	if stacked {
		panelW, h = 14*vg.Inch, 5*vg.Inch*vg.Length(len(panels))
		width, rows, cols = panelW, len(panels), 1
	}
	plots := make([]*plot.Plot, len(panels))
	for i, pn := range panels {
		p, err := pn.plot(panelW)
		if err != nil {
			return err
		}
		plots[i] = p
	}
	img := vgimg.NewWith(vgimg.UseWH(width, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	// Room for the family title above the panels.
	top := dc
	top.Max.Y -= 0.35 * vg.Inch
	st := text.Style{Font: plot.DefaultFont, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter, YAlign: draw.YTop}
	st.Font.Size = vg.Points(14)
	dc.FillText(st, vg.Point{X: width / 2, Y: h - 0.08*vg.Inch}, title)

	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: 0.2 * vg.Inch, PadY: 0.2 * vg.Inch, PadTop: 0.1 * vg.Inch, PadBottom: 0.1 * vg.Inch, PadLeft: 0.1 * vg.Inch, PadRight: 0.1 * vg.Inch}
	grid := make([][]*plot.Plot, rows)
	for i, p := range plots {
		grid[i/cols] = append(grid[i/cols], p)
	}
	canvases := plot.Align(grid, tiles, top)
	for i, p := range plots {
		p.Draw(canvases[i/cols][i%cols])
	}
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

// errBars are min-max error bars around medians.
type errBars struct {
	x, med, lo, hi []float64
}

func (e errBars) Len() int                        { return len(e.x) }
func (e errBars) XY(i int) (float64, float64)     { return e.x[i], e.med[i] }
func (e errBars) YError(i int) (float64, float64) { return e.med[i] - e.lo[i], e.hi[i] - e.med[i] }
func (e *errBars) add(x float64, m *measurement) {
	e.x = append(e.x, x)
	e.med = append(e.med, m.Median)
	e.lo = append(e.lo, m.Min)
	e.hi = append(e.hi, m.Max)
}
func (e errBars) empty() bool                            { return len(e.x) == 0 }
func (pn panel) slots() float64                          { return float64(len(pn.groups) * (len(pn.series) + 1)) }
func (pn panel) x(g, s int) float64                      { return float64(g*(len(pn.series)+1) + s) }
func (pn panel) center(g int) float64                    { return pn.x(g, 0) + float64(len(pn.series)-1)/2 }
func groupLabel(g string) string                         { return strings.ReplaceAll(g, "_", " ") }
func barWidth(panelW vg.Length, slots float64) vg.Length { return panelW * 0.72 / vg.Length(slots) }

func (pn panel) plot(panelW vg.Length) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.title
	p.Y.Label.Text = pn.unit
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	w := barWidth(panelW, pn.slots())
	var bars errBars
	var lx, ly []float64
	var labels []string
	ymax := 0.0
	inLegend := map[string]bool{}
	for si, s := range pn.series {
		for gi, g := range pn.groups {
			m := pn.get(g, s)
			if m == nil || math.IsNaN(m.Median) {
				continue
			}
			bc, err := plotter.NewBarChart(plotter.Values{m.Median}, w)
			if err != nil {
				return nil, err
			}
			bc.XMin = pn.x(gi, si)
			bc.Color = colorOf(s, si)
			bc.LineStyle.Width = 0
			p.Add(bc)
			if len(pn.series) > 1 && !inLegend[s] {
				inLegend[s] = true
				p.Legend.Add(s, bc)
			}
			bars.add(bc.XMin, m)
			label := formatValue(m.Median)
			if pn.ratio != nil {
				if r := pn.ratio(g, s); r != "" {
					label += "\n" + r
				}
			}
			lx, ly, labels = append(lx, bc.XMin), append(ly, m.Max), append(labels, label)
			ymax = math.Max(ymax, m.Max)
		}
	}
	if !bars.empty() {
		eb, err := plotter.NewYErrorBars(bars)
		if err != nil {
			return nil, err
		}
		eb.LineStyle.Width = vg.Points(1)
		eb.CapWidth = w / 3
		p.Add(eb)
		xys := make(plotter.XYs, len(lx))
		for i := range lx {
			xys[i] = plotter.XY{X: lx[i], Y: ly[i]}
		}
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return nil, err
		}
		for i := range lb.TextStyle {
			lb.TextStyle[i].Font.Size = vg.Points(8)
			lb.TextStyle[i].XAlign = draw.XCenter
			lb.TextStyle[i].YAlign = draw.YBottom
		}
		lb.Offset = vg.Point{Y: vg.Points(3)}
		p.Add(lb)
	}
	p.Y.Max = ymax * 1.3 // room for the labels and legend
	ticks := make([]plot.Tick, len(pn.groups))
	for gi, g := range pn.groups {
		ticks[gi] = plot.Tick{Value: pn.center(gi), Label: groupLabel(g)}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = -0.8, pn.slots()-1.2
	if len(pn.groups) > 3 || len(pn.series) == 1 && len(pn.groups) > 2 {
		p.X.Tick.Label.Rotation = math.Pi / 8
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YTop
	}
	return p, nil
}

// servicePanels: the rate against the number of services (log x axis), one
// line per contender, for TCP_RR and TCP_CRR; then the time to program
// services into an empty node.
func servicePanels(r *results) []chartPanel {
	counts := serviceCounts(r)
	if len(counts) == 0 {
		return nil
	}
	var out []chartPanel
	for _, k := range []struct{ metric, title, unit string }{
		{"rr_rate", "TCP_RR through a ClusterIP (higher is better)", "transactions/s"},
		{"crr_rate", "TCP_CRR through a ClusterIP (higher is better)", "connections/s"},
	} {
		lp := linePanel{title: k.title, unit: k.unit, xLabel: "services programmed (the measured one last, or _mid: in the middle)"}
		for _, pos := range []svcPosition{posLast, posMid} {
			for _, c := range []string{cPodpath, cIptables, cNftables} {
				var ms []*measurement
				var xs []float64
				for _, n := range counts {
					if m := r.find(famServices, fmt.Sprintf("%s%s@%d", k.metric, pos.suffix, n), c); m != nil {
						ms, xs = append(ms, m), append(xs, float64(n))
					}
				}
				if len(ms) > 0 {
					lp.lines = append(lp.lines, line{name: c + pos.suffix, x: xs, m: ms})
				}
			}
		}
		out = append(out, lp)
	}
	var prog []string
	var contenders []string
	for _, m := range r.family(famServices) {
		if strings.HasPrefix(m.Metric, "program@") {
			prog = append(prog[:0], m.Metric)
			contenders = append(contenders, m.Contender)
		}
	}
	if len(prog) > 0 {
		out = append(out, panel{
			title: "time to program " + strings.TrimPrefix(prog[0], "program@") + " services into an empty node (lower is better)", unit: "s",
			groups: prog, series: contenders,
			get: func(g, s string) *measurement { return r.find(famServices, g, s) },
			ratio: func(g, s string) string {
				m, base := r.find(famServices, g, s), r.find(famServices, g, cPodpath)
				if s == cPodpath || m == nil || base == nil || base.Median == 0 {
					return ""
				}
				return fmt.Sprintf("%.0fx podpath", m.Median/base.Median)
			},
		})
	}
	return out
}

// line is one series of a linePanel: medians with min-max error bars.
type line struct {
	name string
	x    []float64
	m    []*measurement
}

// linePanel plots series against a logarithmic x axis.
type linePanel struct {
	title, unit, xLabel string
	lines               []line
}

func (lp linePanel) plot(vg.Length) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = lp.title
	p.Y.Label.Text = lp.unit
	p.X.Label.Text = lp.xLabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	ymax, xmin, xmax := 0.0, math.Inf(1), 0.0
	for i, l := range lp.lines {
		if len(l.m) == 0 {
			continue
		}
		var bars errBars
		xys := make(plotter.XYs, len(l.m))
		labels := make([]string, len(l.m))
		for j, m := range l.m {
			bars.add(l.x[j], m)
			xys[j] = plotter.XY{X: l.x[j], Y: m.Median}
			labels[j] = formatValue(m.Median)
			ymax = math.Max(ymax, m.Max)
			xmin, xmax = math.Min(xmin, l.x[j]), math.Max(xmax, l.x[j])
		}
		ln, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		c := colorOf(l.name, i)
		ln.Color, pts.Color = c, c
		ln.Width = vg.Points(2)
		pts.Shape = draw.CircleGlyph{}
		pts.Radius = vg.Points(3)
		p.Add(ln, pts)
		p.Legend.Add(l.name, ln, pts)
		eb, err := plotter.NewYErrorBars(bars)
		if err != nil {
			return nil, err
		}
		eb.Color = c
		eb.CapWidth = vg.Points(6)
		p.Add(eb)
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return nil, err
		}
		for k := range lb.TextStyle {
			lb.TextStyle[k].Font.Size = vg.Points(8)
			lb.TextStyle[k].Color = c
			lb.TextStyle[k].XAlign = draw.XLeft
		}
		lb.Offset = vg.Point{X: vg.Points(5), Y: vg.Points(2)}
		p.Add(lb)
	}
	if xmax == 0 {
		return p, nil
	}
	p.Y.Max = ymax * 1.25
	p.X.Min, p.X.Max = xmin/2, xmax*3
	return p, nil
}

// series is one line of a seriesPanel.
type series struct {
	name   string
	x, y   []float64
	dashed bool
}

// seriesPanel plots values over time on linear axes, one line per series,
// with a dashed vertical mark at mark when markLabel is set.
type seriesPanel struct {
	title, unit, xLabel string
	series              []series
	mark                float64
	markLabel           string
}

func (sp seriesPanel) plot(vg.Length) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = sp.title
	p.Y.Label.Text = sp.unit
	p.X.Label.Text = sp.xLabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	ymax := 0.0
	dashes := []vg.Length{vg.Points(5), vg.Points(3)}
	for i, s := range sp.series {
		xys := make(plotter.XYs, len(s.x))
		for j := range s.x {
			xys[j] = plotter.XY{X: s.x[j], Y: s.y[j]}
			ymax = math.Max(ymax, s.y[j])
		}
		ln, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		ln.Color = colorOf(s.name, i)
		ln.Width = vg.Points(1.5)
		if s.dashed {
			ln.Dashes = dashes
		}
		p.Add(ln)
		p.Legend.Add(s.name, ln)
	}
	// Room for the legend above the lines (a row a series); a flat zero
	// line stays visible.
	p.Y.Max = math.Max(ymax*(1.2+0.06*float64(len(sp.series)+1)), 1)
	if sp.markLabel != "" {
		mk, err := plotter.NewLine(plotter.XYs{{X: sp.mark, Y: 0}, {X: sp.mark, Y: p.Y.Max}})
		if err != nil {
			return nil, err
		}
		mk.Color, mk.Dashes = color.Gray{Y: 120}, dashes
		p.Add(mk)
		p.Legend.Add(sp.markLabel, mk)
	}
	return p, nil
}
