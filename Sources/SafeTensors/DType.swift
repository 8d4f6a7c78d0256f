#if _endian(big)
#error("safetensors data is little-endian and this module copies it raw")
#endif

/// The element types of the safetensors format, spelled as in its header.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case bool = "BOOL"
    case u8 = "U8"
    case i8 = "I8"
    case i16 = "I16"
    case u16 = "U16"
    case f16 = "F16"
    case bf16 = "BF16"
    case i32 = "I32"
    case u32 = "U32"
    case f32 = "F32"
    case f64 = "F64"
    case i64 = "I64"
    case u64 = "U64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .bool, .u8, .i8: 1
        case .i16, .u16, .f16, .bf16: 2
        case .i32, .u32, .f32: 4
        case .f64, .i64, .u64: 8
        }
    }
}

/// A Swift type whose in-memory bytes are exactly one element of a safetensors dtype.
public protocol SafeTensorsElement: BitwiseCopyable {
    static var dtype: SafeTensorsDType { get }
}

extension Float: SafeTensorsElement { public static var dtype: SafeTensorsDType { .f32 } }
extension Double: SafeTensorsElement { public static var dtype: SafeTensorsDType { .f64 } }
extension Int64: SafeTensorsElement { public static var dtype: SafeTensorsDType { .i64 } }
extension Int32: SafeTensorsElement { public static var dtype: SafeTensorsDType { .i32 } }
extension UInt8: SafeTensorsElement { public static var dtype: SafeTensorsDType { .u8 } }

/// A tensor as a safetensors header describes it.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Where the tensor's bytes lie, relative to the start of the data section.
    public let dataOffsets: Range<Int>

    public var elementCount: Int { shape.reduce(1, *) }
}

/// The element count of `shape`, or nil if a dimension is negative or the product overflows.
func elementCount(of shape: [Int]) -> Int? {
    var count = 1
    for dimension in shape {
        guard dimension >= 0 else { return nil }
        let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
        guard !overflow else { return nil }
        count = product
    }
    return count
}

/// `[2, 3]`, as shapes are written in messages.
func describe(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}
