/// The datasets ddptrain knows by name (`--dataset`), in one place: where Debian puts them,
/// their published normalization and their class names.
public enum DatasetKind: String, CaseIterable, Sendable {
    case fashionMNIST = "fashion-mnist"
    case mnist
    case cifar10
    case synthetic

    /// "fashion-mnist, mnist, cifar10, synthetic", for messages.
    public static let names = allCases.map(\.rawValue).joined(separator: ", ")

    /// Where Debian's dataset-fashion-mnist and dataset-mnist packages put the IDX files.
    public var defaultDirectory: String? {
        switch self {
        case .fashionMNIST: "/usr/share/datasets/fashion-mnist"
        case .mnist: "/usr/share/datasets/mnist"
        case .cifar10, .synthetic: nil
        }
    }

    /// Published statistics of the training pixels in [0, 1] (they agree with
    /// `pixelStatistics()` of the full training sets to 4 digits; a test checks); nil: the
    /// training set's own are computed.
    public var knownNormalization: Normalization? {
        switch self {
        case .fashionMNIST: Normalization(mean: 0.2860, std: 0.3530)
        case .mnist: Normalization(mean: 0.1307, std: 0.3081)
        case .cifar10, .synthetic: nil
        }
    }

    /// The classes' names, by label; empty where they have none.
    public var classNames: [String] {
        switch self {
        case .fashionMNIST: ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        case .cifar10: ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        case .mnist, .synthetic: []
        }
    }
}
