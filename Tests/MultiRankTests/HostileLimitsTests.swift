import Foundation
import XCTest

/// Classes a third and a fourth probe found (2026-12-04): the process's own resource limits
/// (which shells and Slurm pass on to jobs), a resume from an earlier checkpoint that left the
/// replaced run's later checkpoints for the next `--resume auto`, arguments that are not
/// UTF-8, and a standard error that cannot be written.
final class HostileLimitsTests: ScratchFolderTestCase {

    /// `mpirun -n ranks bash -c 'ulimit LIMIT; exec ddptrain args'`: every rank under the limit.
    func runLimited(ranks: Int, _ limit: String, _ args: [String]) throws -> MPIRun.Result {
        let env = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OPENBLAS_NUM_THREADS": "1", "DDPTRAIN_PROGRESS": "lines"]
        let r = try Background("/usr/bin/env", ["mpirun", "-n", String(ranks), "--oversubscribe", "--bind-to", "none",
                                                "/bin/bash", "-c", "ulimit \(limit) && exec \"$0\" \"$@\"", MPIRun.binary] + args,
                               environment: env).wait(timeout: 120)
        XCTAssertFalse(r.timedOut, "\(args): \(r.stderr)")
        return r
    }

    /// An MLP with hidden layers of these widths.
    func writeModel(_ name: String, widths: [Int]) throws -> String {
        let file = path(name)
        let hidden = widths.map { "  - {type: linear, out: \($0)}\n  - relu\n" }.joined()
        try ("layers:\n  - flatten\n" + hidden + "  - {type: linear, out: 10}\n").write(toFile: file, atomically: false, encoding: .utf8)
        return file
    }

    func assertNoCrash(_ r: MPIRun.Result, file: StaticString = #filePath, line: UInt = #line) {
        for trace in ["Fatal error", "Program crashed", "Signal 6", "Signal 11", "core dumped"] {
            XCTAssertFalse(r.stderr.contains(trace), r.stderr, file: file, line: line)
        }
    }

    /// A model of 186 M parameters (2.2 GB with gradients and momentum) under `ulimit -v`
    /// 900 MB: refused before anything is allocated, naming the limit, exit 65 (it was
    /// Swift's allocation trap, 134). Under a limit the estimate passes but the buffers do
    /// not (52 M parameters, 629 MB, beside some 330 MB the rank maps itself, under 1.1 GB),
    /// the allocation that fails ends the job with the same status and says what failed.
    func testAddressSpaceLimitIsAnErrorNamingIt() throws {
        let args = ["train", "--dataset", "synthetic", "--per-rank-batch", "16", "--steps", "2", "--eval-every", "0", "--threads", "1"]
        let refused = try runLimited(ranks: 2, "-v 900000", args + ["--model", try writeModel("huger.yaml", widths: [65536, 2048]), "--run-dir", path("refused")])
        XCTAssertEqual(refused.status, 65, refused.stderr)
        assertNoCrash(refused)
        XCTAssertTrue(refused.stderr.contains("model huger needs 2.2 GB per rank"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("the process's address-space limit (ulimit -v) of 921600000 bytes leaves"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("raise the limit or train a smaller model or batch"), refused.stderr)

        // 1.1 GB: the estimate (629 MB beside some 330 MB mapped) passes; the buffers, which
        // need up to 1.4 GB of address space, do not.
        let failed = try runLimited(ranks: 1, "-v 1100000", args + ["--model", try writeModel("huge.yaml", widths: [65536]), "--run-dir", path("failed")])
        XCTAssertEqual(failed.status, 65, failed.stderr)
        assertNoCrash(failed)
        XCTAssertTrue(failed.stderr.contains("out of memory: mmap of") || failed.stderr.contains("model huge needs 629.4 MB per rank"), failed.stderr)
        XCTAssertTrue(failed.stderr.contains("the process's address-space limit (ulimit -v) of 1126400000 bytes leaves"), failed.stderr)
    }

    /// Past `ulimit -f`, a write fails with EFBIG: a checkpoint that does not fit is exit 74
    /// with the reason and no temporary file left (SIGXFSZ ended the ranks without a word,
    /// status 153, half a file behind, and launch/train restarted into the same wall).
    func testFileSizeLimitIsAWriteFailure() throws {
        let model = try writeModel("big.yaml", widths: [2048])  // 1.6 M parameters: 13 MB with momentum
        let run = path("limited")
        let r = try runLimited(ranks: 2, "-f 6000", ["train", "--dataset", "synthetic", "--model", model, "--per-rank-batch", "16",
                                                     "--steps", "4", "--checkpoint-every", "4", "--eval-every", "0", "--run-dir", run])
        XCTAssertEqual(r.status, 74, r.stderr)
        assertNoCrash(r)
        XCTAssertTrue(r.stderr.contains("\(run)/checkpoints/step-00000004.safetensors: write(\(run)/checkpoints/.step-00000004.safetensors.tmp."),
                      r.stderr)
        XCTAssertTrue(r.stderr.contains("failed: File too large (errno 27)"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints"), [], "no temporary file is left")
    }

    /// Resuming from an earlier checkpoint (one before a divergence, with a lower --lr)
    /// replaces the run from that step on: the replaced run's later checkpoints are moved
    /// aside, byte for byte, so that the next `--resume auto` continues the new run, not the
    /// old one's step 16 (it did, with the old learning rate, and exit 0). A changed --lr
    /// is said on resume.
    func testResumeFromAnEarlierCheckpointSetsTheLaterOnesAside() throws {
        let run = path("lineage")
        func train(_ extra: [String]) throws -> MPIRun.Result {
            try MPIRun.run(ranks: 2, ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--per-rank-batch", "16",
                                      "--checkpoint-every", "4", "--keep", "10", "--eval-every", "0", "--run-dir", run] + extra)
        }
        XCTAssertEqual(try train(["--steps", "16"]).status, 0)
        let checkpoints = run + "/checkpoints"
        let later = ["step-00000008.safetensors", "step-00000012.safetensors", "step-00000016.safetensors"]
        let bytes = try later.map { try Data(contentsOf: URL(fileURLWithPath: checkpoints + "/" + $0)) }

        let earlier = try train(["--steps", "6", "--lr", "0.05", "--resume", checkpoints + "/step-00000004.safetensors"])
        XCTAssertEqual(earlier.status, 0, earlier.stderr)
        let aside = checkpoints + "/superseded-after-step-00000004"
        XCTAssertTrue(earlier.stderr.contains("resumed from \(checkpoints)/step-00000004.safetensors (step 4): the checkpoints of later steps "
                                              + "(\(later.joined(separator: ", "))) belong to the run this one replaces; moved to \(aside)"), earlier.stderr)
        XCTAssertTrue(earlier.stderr.contains("step-00000004.safetensors was trained with other settings: --lr 0.1 -> 0.05; "
                                              + "the run goes on with the new ones from step 4"), earlier.stderr)
        XCTAssertEqual(try later.map { try Data(contentsOf: URL(fileURLWithPath: aside + "/" + $0)) }, bytes, "moved, byte for byte")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: checkpoints).sorted(),
                       ["step-00000004.safetensors", "step-00000006.safetensors", "superseded-after-step-00000004"])

        let auto = try train(["--steps", "16", "--lr", "0.05", "--resume", "auto"])
        XCTAssertEqual(auto.status, 0, auto.stderr)
        XCTAssertTrue(auto.stdout.contains("resumed from \(checkpoints)/step-00000006.safetensors at step 6"), auto.stdout)
        XCTAssertFalse(auto.stderr.contains("other settings"), auto.stderr)
        XCTAssertEqual(try later.map { try Data(contentsOf: URL(fileURLWithPath: aside + "/" + $0)) }, bytes, "pruning does not look there")

        // Back to the replaced run: resuming its step 8 from the folder sets this run's step 6
        // aside (after step 4, where the two part), and leaves step 4, which both share.
        let back = try train(["--steps", "10", "--resume", aside + "/step-00000008.safetensors"])
        XCTAssertEqual(back.status, 0, back.stderr)
        XCTAssertTrue(back.stderr.contains("(step-00000006.safetensors, step-00000008.safetensors, step-00000012.safetensors, step-00000016.safetensors) "
                                           + "belong to the run this one replaces; moved to \(aside)-2"), back.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: checkpoints).sorted(),
                       ["step-00000004.safetensors", "step-00000010.safetensors", "superseded-after-step-00000004",
                        "superseded-after-step-00000004-2"])
    }

    /// With --allow-batch-change the run numbers its steps anew (step 16 at batch 32 is step 8
    /// at 64) and names its checkpoints so: the old numbering's files are moved aside, never
    /// deleted, and the file resumed from is linked as step 8, so that the next --resume auto
    /// continues this run (it went back to the old step 16, losing the steps since).
    func testResumeWithAnotherBatchRenumbersTheCheckpoints() throws {
        let run = path("batch")
        let common = ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--checkpoint-every", "4",
                      "--keep", "10", "--eval-every", "0", "--run-dir", run]
        XCTAssertEqual(try MPIRun.run(ranks: 2, common + ["--per-rank-batch", "16", "--steps", "16"]).status, 0)
        let checkpoints = run + "/checkpoints"
        let resumed = try Data(contentsOf: URL(fileURLWithPath: checkpoints + "/step-00000016.safetensors"))
        let changed = try MPIRun.run(ranks: 2, common + ["--per-rank-batch", "32", "--allow-batch-change", "--steps", "12", "--resume", "auto"])
        XCTAssertEqual(changed.status, 0, changed.stderr)
        XCTAssertTrue(changed.stdout.contains("resumed from \(checkpoints)/step-00000016.safetensors at step 8"), changed.stdout)
        let aside = checkpoints + "/superseded-by-batch-change-at-step-00000016"
        XCTAssertTrue(changed.stderr.contains("(step-00000004.safetensors, step-00000008.safetensors, step-00000012.safetensors, "
                                              + "step-00000016.safetensors) were moved to \(aside)"), changed.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: aside).count, 4)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: aside + "/step-00000016.safetensors")), resumed)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: checkpoints + "/step-00000008.safetensors")), resumed)
        let next = try MPIRun.run(ranks: 2, common + ["--per-rank-batch", "32", "--steps", "14", "--resume", "auto"])
        XCTAssertEqual(next.status, 0, next.stderr)
        XCTAssertTrue(next.stdout.contains("resumed from \(checkpoints)/step-00000012.safetensors at step 12"), next.stdout)
    }

    /// A standard error that cannot be written (a full disk, closed) loses the messages, not
    /// the run: Foundation's FileHandle.write trapped on the first one (132), so inspect's
    /// error, a run's warnings and a stop on request all ended in a crash. A closed standard
    /// output still fails the command that wrote there (74).
    func testAStandardErrorThatCannotBeWrittenIsNoCrash() throws {
        func shell(_ script: String) throws -> MPIRun.Result {
            try Background("/bin/bash", ["-c", "cd \"$0\" && B=\"$1\" && " + script, scratch.path, MPIRun.binary]).wait(timeout: 60)
        }
        let inspect = try shell("\"$B\" inspect nowhere.safetensors 2>/dev/full; echo \"status $?\"; \"$B\" inspect nowhere 2>&-; echo \"status $?\"")
        XCTAssertEqual(inspect.stdout, "status 1\nstatus 1\n", inspect.stderr)
        let train = try shell("\"$B\" train --dataset synthetic --model mlp --train-samples 256 --steps 4 --eval-every 0 --json --run-dir r "
                              + "2>/dev/full > summary.json; echo \"status $?\"")
        XCTAssertEqual(train.stdout, "status 0\n", train.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("r/checkpoints/step-00000004.safetensors")))
        let closed = try shell("\"$B\" summary --model mlp >&- 2>/dev/null; echo \"status $?\" >&2")
        XCTAssertEqual(closed.stderr, "status 74\n")
    }

    /// SIGHUP (the terminal closed) while a checkpoint is being written ends the run at once,
    /// 129 as by default, but without leaving the half-written temporary file.
    func testHangupWhileWritingACheckpointLeavesNoTemporaryFile() throws {
        let run = path("hangup")
        let r = try Background(MPIRun.binary, ["train", "--dataset", "synthetic", "--model", "mlp", "--train-samples", "256", "--steps", "8",
                                               "--checkpoint-every", "2", "--eval-every", "0", "--run-dir", run],
                               environment: ["DDPTRAIN_INJECT_SIGNAL": "0:4:checkpoint:HUP"]).wait(timeout: 60)
        XCTAssertEqual(r.status, 129, r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted(), ["step-00000002.safetensors"])
    }

    /// The launchers in a folder that was deleted, or with a TMPDIR they cannot write: 65,
    /// which launch/train does not retry (it was 1 from mpirun or mktemp, retried into the
    /// same wall).
    func testLaunchersRefuseADeletedFolderAndAnUnwritableTMPDIR() throws {
        let launch = MPIRun.repoRoot.appendingPathComponent("launch").path
        let env = ["DDPTRAIN_BIN": MPIRun.binary, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
        let train = "--max-restarts 2 -- --model mlp --dataset synthetic --steps 2 --run-dir \"$0/run\""
        let deleted = try Background("/bin/bash", ["-c", "mkdir \"$0/gone\" && cd \"$0/gone\" && rmdir \"$0/gone\" && "
                                                   + "\"$1/mpirun\" -n 1 true; echo \"mpirun $?\"; \"$1/train\" -n 1 \(train); echo \"train $?\"",
                                                   scratch.path, launch], environment: env).wait(timeout: 60)
        XCTAssertEqual(deleted.stdout, "mpirun 65\ntrain 65\n", deleted.stderr)
        XCTAssertTrue(deleted.stderr.contains("launch/mpirun: the current folder no longer exists"), deleted.stderr)
        XCTAssertTrue(deleted.stderr.contains("launch/train: the current folder no longer exists"), deleted.stderr)
        let tmp = try Background("/bin/bash", ["-c", "touch \"$0/file\" && export TMPDIR=\"$0/file\" && \"$1/mpirun\" -n 1 true; echo \"mpirun $?\"; "
                                               + "\"$1/train\" -n 1 \(train); echo \"train $?\"", scratch.path, launch], environment: env).wait(timeout: 60)
        XCTAssertEqual(tmp.stdout, "mpirun 65\ntrain 65\n", tmp.stderr)
        XCTAssertTrue(tmp.stderr.contains("launch/mpirun: cannot create a folder in \(scratch.path)/file (TMPDIR)"), tmp.stderr)
        XCTAssertTrue(tmp.stderr.contains("launch/train: cannot create a file in \(scratch.path)/file (TMPDIR)"), tmp.stderr)
    }

    /// A model file changed after training (a ReLU made a sigmoid: every shape the same, so
    /// the weights load) is found by the layers the checkpoint records: eval and resume
    /// refuse it, naming the layer (eval gave another loss, and resume went on, both exit 0).
    func testAModelFileChangedSinceTrainingIsRefused() throws {
        let model = try writeModel("m.yaml", widths: [32])
        let run = path("changed")
        let train = ["train", "--dataset", "synthetic", "--train-samples", "256", "--model", model, "--eval-every", "0", "--run-dir", run]
        XCTAssertEqual(try MPIRun.run(ranks: 2, train + ["--steps", "8"]).status, 0)
        let checkpoint = run + "/checkpoints/step-00000008.safetensors"
        XCTAssertEqual(try MPIRun.run(ranks: 2, ["eval", "--checkpoint", checkpoint]).status, 0)
        try String(contentsOfFile: model, encoding: .utf8).replacingOccurrences(of: "relu", with: "sigmoid")
            .write(toFile: model, atomically: false, encoding: .utf8)
        let message = "\(checkpoint): was trained as another model than '\(model)' now describes: layer 2 was ReLU(), is now Sigmoid()"
        let eval = try MPIRun.run(ranks: 2, ["eval", "--checkpoint", checkpoint])
        XCTAssertEqual(eval.status, 65, eval.stderr)
        XCTAssertTrue(eval.stderr.contains(message), eval.stderr)
        let resume = try MPIRun.run(ranks: 2, train + ["--steps", "16", "--resume", "auto"])
        XCTAssertEqual(resume.status, 65, resume.stderr)
        XCTAssertTrue(resume.stderr.contains(message), resume.stderr)
    }

    /// An argument that is not UTF-8 is refused with the bytes shown (Swift replaced them
    /// with U+FFFD, so `run\xff` created or read another folder than the one given).
    func testArgumentsThatAreNotUTF8AreRefused() throws {
        let shell = "cd \"$0\" && exec \"$1\" train --dataset synthetic --model mlp --steps 1 --run-dir \"$(printf 'run\\377')\""
        let r = try Background("/bin/bash", ["-c", shell, scratch.path, MPIRun.binary]).wait(timeout: 60)
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("argument 9, 'run\\xff', is not UTF-8 text: ddptrain takes paths and values as UTF-8"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: scratch.path), [], "no folder under another name")
    }
}
