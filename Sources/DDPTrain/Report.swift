import Foundation

/// A line chart as standalone SVG: axes with ticks, labels, a legend, one polyline per
/// series (`class="series"`, `data-variant` naming it), so that a test can count them.
public struct LineChart {
    public struct Series {
        public var name: String
        public var points: [(x: Double, y: Double)]
        /// A dot at every point (evaluations, few and far apart).
        public var markers = false
        /// The unsmoothed values, drawn faint behind the line (`class="raw"`).
        public var raw: [(x: Double, y: Double)] = []
        /// Mean ± standard deviation over repeats, drawn as a shaded band (`class="band"`).
        public var band: [(x: Double, low: Double, high: Double)] = []
        /// Dots on the line where something happened (evaluations), `class="marker"`.
        public var markerPoints: [(x: Double, y: Double)] = []
        public init(name: String, points: [(x: Double, y: Double)], markers: Bool = false) {
            self.name = name; self.points = points; self.markers = markers
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var logY = false
    /// Steps and epochs: ticks on whole numbers only.
    public var integerX = true
    /// The y axis spans at least this much (accuracy: a few points, so that a few tenths do
    /// not fill the chart), widened around the data's middle and kept inside `yLimits`.
    public var minimumYSpan = 0.0
    public var yLimits: ClosedRange<Double>?

    public init(title: String, xLabel: String, yLabel: String, series: [Series], logY: Bool = false) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series; self.logY = logY
    }

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    public func svg(width: Int = 760, height: Int = 440) -> String {
        let left = 70.0, right = 220.0, top = 40.0, bottom = 56.0
        let plotW = Double(width) - left - right, plotH = Double(height) - top - bottom
        let drawn = series.flatMap { $0.points + $0.raw + $0.band.flatMap { [($0.x, $0.low), ($0.x, $0.high)] } }
        let all = drawn.filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
        let fy: (Double) -> Double = { logY ? log10($0) : $0 }
        var (x0, x1) = (all.map(\.x).min() ?? 0, all.map(\.x).max() ?? 1)
        var (y0, y1) = (all.map { fy($0.y) }.min() ?? 0, all.map { fy($0.y) }.max() ?? 1)
        // One x value: a span of 1, or of the spacing of doubles there (x0 + 1 == x0 past 2^53).
        if x1 <= x0 { x1 = x0 + max(1, x0.ulp) }
        if !logY, y1 - y0 < minimumYSpan {
            let middle = (y0 + y1) / 2
            (y0, y1) = (middle - minimumYSpan / 2, middle + minimumYSpan / 2)
            if let limits = yLimits {
                if y0 < limits.lowerBound { (y0, y1) = (limits.lowerBound, limits.lowerBound + minimumYSpan) }
                if y1 > limits.upperBound { (y0, y1) = (limits.upperBound - minimumYSpan, limits.upperBound) }
            }
        }
        if y1 <= y0 { y1 = y0 + (logY ? 1 : max(abs(y0) * 0.1, 1e-3)) }
        let xTicks = niceTicks(x0, x1, minimumStep: integerX && x1 - x0 >= 2 ? 1 : 0), yTicks = logY ? Array(Int(floor(y0))...Int(ceil(y1))).map(Double.init) : niceTicks(y0, y1)
        (x0, x1) = (min(x0, xTicks.first!), max(x1, xTicks.last!))
        (y0, y1) = (min(y0, yTicks.first!), max(y1, yTicks.last!))
        let px = { (x: Double) in left + (x - x0) / (x1 - x0) * plotW }
        let py = { (y: Double) in top + plotH - (fy(y) - y0) / (y1 - y0) * plotH }
        let pyRaw = { (v: Double) in top + plotH - (v - y0) / (y1 - y0) * plotH }

        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" font-family="Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left + plotW / 2)" y="22" text-anchor="middle" font-size="15" font-weight="bold">\(escapeHTML(title))</text>

        """
        for t in xTicks {
            s += "<line x1=\"\(f(px(t)))\" y1=\"\(f(top))\" x2=\"\(f(px(t)))\" y2=\"\(f(top + plotH))\" stroke=\"#e6e6e6\"/>"
            s += "<text x=\"\(f(px(t)))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(label(t))</text>\n"
        }
        for t in yTicks {
            s += "<line x1=\"\(f(left))\" y1=\"\(f(pyRaw(t)))\" x2=\"\(f(left + plotW))\" y2=\"\(f(pyRaw(t)))\" stroke=\"#e6e6e6\"/>"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(pyRaw(t) + 4))\" text-anchor=\"end\">\(logY ? label(pow(10, t)) : label(t))</text>\n"
        }
        s += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333\"/>\n"
        s += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(Double(height) - 14))\" text-anchor=\"middle\">\(escapeHTML(xLabel))</text>\n"
        s += "<text transform=\"translate(18 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(escapeHTML(yLabel))</text>\n"
        for (i, series) in series.enumerated() {
            let color = Self.palette[i % Self.palette.count]
            let dash = i >= Self.palette.count ? " stroke-dasharray=\"6 3\"" : ""
            let visible = { (p: (x: Double, y: Double)) in p.x.isFinite && p.y.isFinite && (!logY || p.y > 0) }
            let band = series.band.filter { visible(($0.x, $0.low)) && visible(($0.x, $0.high)) }
            if !band.isEmpty {
                let outline = band.map { "\(f(px($0.x))),\(f(py($0.high)))" } + band.reversed().map { "\(f(px($0.x))),\(f(py($0.low)))" }
                s += "<polygon class=\"band\" data-variant=\"\(escapeHTML(series.name))\" fill=\"\(color)\" fill-opacity=\"0.18\" stroke=\"none\" points=\"\(outline.joined(separator: " "))\"/>\n"
            }
            let raw = series.raw.filter(visible).map { "\(f(px($0.x))),\(f(py($0.y)))" }
            if !raw.isEmpty {
                s += "<polyline class=\"raw\" data-variant=\"\(escapeHTML(series.name))\" fill=\"none\" stroke=\"\(color)\" stroke-opacity=\"0.25\" stroke-width=\"1\" points=\"\(raw.joined(separator: " "))\"/>\n"
            }
            let points = series.points.filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
                .map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            s += "<polyline class=\"series\" data-variant=\"\(escapeHTML(series.name))\" data-points=\"\(series.points.count)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.8\"\(dash) points=\"\(points)\"/>\n"
            for p in series.markers || series.points.count == 1 ? series.points : [] where p.x.isFinite && p.y.isFinite && (!logY || p.y > 0) {
                s += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3\" fill=\"\(color)\"/>\n"
            }
            for p in series.markerPoints where visible(p) {
                s += "<circle class=\"marker\" cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3.5\" fill=\"white\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
            }
            let ly = top + 10 + Double(i) * 18
            s += "<line x1=\"\(f(left + plotW + 14))\" y1=\"\(f(ly))\" x2=\"\(f(left + plotW + 38))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2.5\"\(dash)/>"
            s += "<text x=\"\(f(left + plotW + 44))\" y=\"\(f(ly + 4))\">\(escapeHTML(series.name))</text>\n"
        }
        return s + "</svg>\n"
    }

    private func f(_ v: Double) -> String { String(format: "%.1f", v) }
    private func label(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e6 { return String(Int(v)) }
        return String(format: abs(v) < 0.01 ? "%.2g" : "%.3g", v)
    }
}

/// About five round tick values covering [a, b].
func niceTicks(_ a: Double, _ b: Double, minimumStep: Double = 0) -> [Double] {
    let span = b - a
    let raw = span / 5
    // No span a tick step can divide (one point, or values so large that a + step == a:
    // steps near 2^62): the two ends. Never an empty list.
    guard raw > 0, raw.isFinite, a + raw != a else { return a == b ? [a] : [a, b] }
    let magnitude = pow(10, floor(log10(raw)))
    let nice = [1.0, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
    let step = max(nice, minimumStep)
    var ticks: [Double] = []
    var t = floor(a / step) * step
    while t <= b + step * 0.5 && ticks.count < 20 {
        ticks.append(t)
        if t >= b { break }
        t += step
    }
    return ticks
}

/// The start of a self-contained report page (compare's report, plot's page): head (naming
/// `generator`, by which a page is known again before it is replaced), one style sheet, and
/// the title as a heading.
func reportPageStart(title: String, generator: String = "ddptrain") -> String {
    """
    <!DOCTYPE html>
    <html><head><meta charset="utf-8"><meta name="generator" content="\(escapeHTML(generator))"><title>\(escapeHTML(title))</title>
    <style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}
    td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
    th{background:#f3f3f3}pre{background:#f6f6f6;padding:6px 8px;white-space:pre-wrap}.charts{display:flex;flex-wrap:wrap;gap:8px}
    </style></head><body>
    <h1>\(escapeHTML(title))</h1>
    """
}

public func escapeHTML(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

/// Training loss per step, averaged over windows so that a series has at most
/// `maxPoints` points: window w = ceil(steps / maxPoints), point i at the window's last step.
public func windowedLoss(_ losses: [(step: Int, loss: Double)], maxPoints: Int = 400) -> [(x: Double, y: Double)] {
    thinned(losses.map { (Double($0.step), $0.loss) }, maxPoints: maxPoints)
}

/// The finite points averaged over windows of consecutive points, at most `maxPoints` of them,
/// each at its window's last x.
public func thinned(_ points: [(x: Double, y: Double)], maxPoints: Int) -> [(x: Double, y: Double)] {
    let finite = points.filter { $0.y.isFinite }
    guard !finite.isEmpty else { return [] }
    let window = max(1, (finite.count + maxPoints - 1) / maxPoints)
    return stride(from: 0, to: finite.count, by: window).map { start in
        let chunk = finite[start..<min(start + window, finite.count)]
        return (chunk.last!.x, chunk.map(\.y).reduce(0, +) / Double(chunk.count))
    }
}

/// TensorBoard's smoothing: an exponential moving average with weight `weight` on the past,
/// divided by (1 - weight^n) so that the first points are not pulled towards zero.
public func smoothed(_ points: [(x: Double, y: Double)], weight: Double) -> [(x: Double, y: Double)] {
    var average = 0.0, count = 0.0
    return points.filter { $0.y.isFinite }.map { p in
        average = average * weight + (1 - weight) * p.y
        count += 1
        return (p.x, weight == 0 ? p.y : average / (1 - pow(weight, count)))
    }
}

/// The smoothing weight that averages over about `share` of a curve of `count` points, so
/// that curves with more steps over the same epochs are smoothed alike along the x axis.
public func smoothingWeight(count: Int, share: Double = 0.02) -> Double {
    let span = share * Double(count)
    return span <= 1 ? 0 : min(0.999, 1 - 1 / span)
}
