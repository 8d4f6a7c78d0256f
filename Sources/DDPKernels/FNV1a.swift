/// FNV-1a: the hash of replicas' bytes, dataset fingerprints, cache file names and
/// initialization streams. Simple, and the same on every machine and in every run.
public struct FNV1a {
    public var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    @inlinable
    public mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }

    @inlinable
    public mutating func add(_ bytes: UnsafeRawBufferPointer) { for byte in bytes { add(byte) } }

    public mutating func add(_ text: String) { for byte in text.utf8 { add(byte) } }

    /// The 32-bit variant, of a name.
    public static func hash32(_ text: String) -> UInt32 {
        var hash: UInt32 = 0x811c_9dc5
        for byte in text.utf8 { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return hash
    }
}
