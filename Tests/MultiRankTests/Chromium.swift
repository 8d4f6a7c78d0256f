import Foundation
import XCTest

enum Chromium {
    /// Renders a page to a PNG with headless Chromium (Debian's `chromium`) and checks that
    /// the result is a PNG with something on it.
    static func screenshot(html: String, png: String, windowSize: String = "1200,1400", file: StaticString = #filePath,
                           line: UInt = #line) throws {
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("Chromium is not installed (apt-get install chromium); launch/render-report does this check by hand")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: chromium)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--screenshot=\(png)", "--window-size=\(windowSize)", "file://\(html)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, file: file, line: line)
        let data = try Data(contentsOf: URL(fileURLWithPath: png))
        XCTAssertEqual(Array(data.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "not a PNG", file: file, line: line)
        XCTAssertGreaterThan(data.count, 20_000, "the screenshot looks empty", file: file, line: line)
    }
}
