/// The product of `factors`, or nil if it overflows Int: every size computed from values read
/// from a file or an option goes through here before it is used (DESIGN: untrusted input).
public func checkedProduct(_ factors: [Int]) -> Int? {
    var result = 1
    for factor in factors {
        let (next, overflow) = result.multipliedReportingOverflow(by: factor)
        if overflow { return nil }
        result = next
    }
    return result
}
