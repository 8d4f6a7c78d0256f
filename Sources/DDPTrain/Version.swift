/// ddptrain's version: what `ddptrain --version` prints and config.json records. The one
/// place it is written; raise it with every change users can see.
public enum DDPTrainVersion {
    public static let current = "0.2.0"
}
