// libFuzzer target over the Codec8 framer and decoders.
//
// Built by scripts/fuzz.sh together with Sources/Codec8/*.swift into ONE module (so there is no
// `import Codec8`; the harness sticks to the module's public API anyway). Every invariant violation
// is a `fatalError` with a message, which libFuzzer reports as a crash and saves as an artifact.
//
// Per input:
//  1. Framer: the input as a TCP stream, once starting with the login and once already in packet mode,
//     fed three ways (all at once, two chunks split at a data-derived offset, small random chunks).
//     Every decision is checked against a reference model of the framing rules (PROTOCOL.md §1.4), and
//     the three feeds must produce identical event logs.
//  2. Decoders on every frame the framer cut, on the whole input, and on the input re-wrapped in a valid
//     envelope (length and CRC fixed up, so mutated bodies reach the record parser). AVL packets are
//     walked, materialized, written as JSON, re-encoded (same codec: byte-identical frame and equal
//     records; other codecs: equal records when encodable) and decoded again.
//  3. IMEI.parseLogin on cut logins and on the whole input (round trip through `loginFrame`).
//  4. Structured: the input read as a recipe for AVL records (any codec, large NX values), encoded,
//     decoded and compared; then that frame with one byte flipped/inserted/removed, envelope fixed up.
//  5. UDP: the input as a datagram (decodes or is refused with a category), and its body in a UDP header
//     (fixed IMEI), which must decode exactly when the same body in a TCP envelope does, to equal records.

// MARK: - Entry point

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size >= 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: UnsafeRawPointer(data), count: size)
    var fuzzer = Fuzzer(input: input)
    fuzzer.run()
    return 0
}

// MARK: - Helpers

@inline(never)
func check(
    _ condition: @autoclosure () -> Bool,
    _ message: @autoclosure () -> String,
    file: StaticString = #fileID,
    line: UInt = #line
) {
    if !condition() { fatalError("fuzz invariant violated: \(message())", file: file, line: line) }
}

/// Runs a typed-throwing body and captures its outcome.
func attempt<T>(_ body: () throws(Codec8Error) -> T) -> Result<T, Codec8Error> {
    do throws(Codec8Error) { return .success(try body()) } catch { return .failure(error) }
}

/// Copies `source` into a heap block of exactly its size, so AddressSanitizer sees any read past the end.
func withExactCopy<R>(_ source: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: source.count, alignment: 1)
    defer { block.deallocate() }
    if source.count > 0 { block.copyMemory(from: source) }
    return body(UnsafeRawBufferPointer(block))
}

func withExactCopy<R>(_ source: [UInt8], _ body: (UnsafeRawBufferPointer) -> R) -> R {
    source.withUnsafeBytes { withExactCopy($0, body) }
}

func slice(_ b: UnsafeRawBufferPointer, _ range: Range<Int>) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: b[range])
}

func be16(_ b: UnsafeRawBufferPointer, _ o: Int) -> Int { Int(b[o]) << 8 | Int(b[o + 1]) }
func be32(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt32 {
    UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
}

func hexOf(_ b: UnsafeRawBufferPointer, limit: Int = 64) -> String {
    Hex.encode(b.prefix(limit)) + (b.count > limit ? "…(\(b.count) bytes)" : "")
}

/// Reference CRC-16/IBM, bit by bit (PROTOCOL.md §2.2), to check the table-driven one.
func referenceCRC(_ b: UnsafeRawBufferPointer) -> UInt16 {
    var crc: UInt16 = 0
    for byte in b {
        crc ^= UInt16(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xA001 : crc >> 1 }
    }
    return crc
}

/// splitmix64, for data-derived chunk sizes.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Reads the input from its end as a recipe; zeros once exhausted.
struct Recipe {
    let bytes: UnsafeRawBufferPointer
    var index: Int

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
        self.index = bytes.count
    }

    mutating func u8() -> UInt8 {
        guard index > 0 else { return 0 }
        index -= 1
        return bytes[index]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) << 8 | UInt16(u8()) }
    mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }
    mutating func u64() -> UInt64 { UInt64(u32()) << 32 | UInt64(u32()) }
}

func groupOf(_ value: IOElementValue) -> Int {
    switch value {
    case .u8: 0
    case .u16: 1
    case .u32: 2
    case .u64: 3
    case .bytes: 4
    }
}

// MARK: - Reference framer (PROTOCOL.md §1.4)

func referenceDecision(
    _ b: UnsafeRawBufferPointer,
    mode: TeltonikaFramer.Mode,
    maxDataLength: Int
) -> Result<TeltonikaFramer.Decision, Codec8Error> {
    switch mode {
    case .login:
        if b.count < 2 { return .success(.needMore(2 - b.count)) }
        let n = be16(b, 0)
        guard n == 15 || n == 16 else { return .failure(.badIMEI(.length(n))) }
        return .success(b.count >= 2 + n ? .frame(length: 2 + n) : .needMore(2 + n - b.count))
    case .packets:
        if b.count == 0 { return .success(.needMore(1)) }
        if b[0] == 0xFF { return .success(.keepAlive) }
        for i in 0..<min(4, b.count) where b[i] != 0 { return .failure(.badPreamble(offset: i, byte: b[i])) }
        if b.count < 8 { return .success(.needMore(8 - b.count)) }
        let declared = be32(b, 4)
        guard UInt64(declared) <= UInt64(maxDataLength) else {
            return .failure(.tooLarge(declared: declared, limit: maxDataLength))
        }
        let total = Int(declared) + 12
        return .success(b.count >= total ? .frame(length: total) : .needMore(total - b.count))
    }
}

// MARK: - Stream sessions

enum Event: Equatable {
    case keepAlive(at: Int)
    case login(at: Int, length: Int)
    case frame(at: Int, length: Int)
    /// The framer cut a login that IMEI.parseLogin refused: the server replies 00 and closes.
    case loginRejected(at: Int, Codec8Error)
    /// The framer threw: the server closes the connection.
    case closed(at: Int, Codec8Error)
    /// The stream ended; the framer still wanted `need` more bytes.
    case pending(at: Int, need: Int)
}

struct Fuzzer {
    let input: UnsafeRawBufferPointer
    let hash: UInt64
    let maxDataLength: Int
    var json = RecordJSONEncoder()
    var jsonOut: [UInt8] = []

    init(input: UnsafeRawBufferPointer) {
        self.input = input
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for b in input { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        h ^= UInt64(input.count) &* 0x9E37_79B9_7F4A_7C15
        self.hash = h
        switch h & 7 {
        case 0, 1: maxDataLength = 4096
        case 2: maxDataLength = Int((h >> 8) % 600)  // tiny cap: exercises too_large on ordinary frames
        default: maxDataLength = TeltonikaFramer.defaultMaxDataLength
        }
        jsonOut.reserveCapacity(4096)
    }

    mutating func run() {
        let framer = TeltonikaFramer(maxDataLength: maxDataLength)
        check(framer.maxDataLength == maxDataLength, "framer cap")

        // (1) framer over the input as a stream, both starting modes, three feeds each.
        let split = input.count == 0 ? 0 : Int((hash >> 16) % UInt64(input.count + 1))
        var rng = SplitMix(state: hash)
        let maxChunk = Int((hash >> 40) & 15) + 1
        var small: [Int] = []
        var end = 0
        while end < input.count {
            end = min(input.count, end + 1 + Int(rng.next() % UInt64(maxChunk)))
            small.append(end)
        }
        let feeds: [[Int]] = [
            [input.count],
            split < input.count ? [split, input.count] : [input.count],
            small.isEmpty ? [0] : small,
        ]
        for startMode in [TeltonikaFramer.Mode.login, .packets] {
            let reference = session(framer, startMode: startMode, chunkEnds: feeds[0])
            for feed in feeds.dropFirst() {
                let other = session(framer, startMode: startMode, chunkEnds: feed)
                check(
                    other == reference,
                    "chunked feed \(feed.prefix(8)) gives \(other.prefix(8)) but one feed gives \(reference.prefix(8)) (mode \(startMode))"
                )
            }
            // (2)/(3) decode what the framer cut.
            var deviceID: IMEI? = nil
            for event in reference {
                switch event {
                case .login(let at, let length):
                    deviceID = inspectLogin(slice(input, at..<(at + length)), cutByFramer: true)
                    check(deviceID != nil, "a login the session accepted does not parse")
                case .frame(let at, let length):
                    inspectPacketFrame(slice(input, at..<(at + length)), deviceID: deviceID)
                case .loginRejected(let at, let error):
                    check(startMode == .login, "login rejected in packet mode")
                    guard case .badIMEI(.nonDigit) = error else {
                        fatalError("fuzz invariant violated: framer-cut login rejected with \(error) at \(at)")
                    }
                case .keepAlive, .closed, .pending: break
                }
            }
        }

        // (2) the whole input as one standalone frame, with the fuzz cap and the default cap.
        for cap in Set([maxDataLength, TeltonikaFramer.defaultMaxDataLength]) {
            inspectWhole(cap: cap)
        }
        // (3) the whole input as a login.
        _ = inspectLogin(input, cutByFramer: false)
        // (5) the whole input as a UDP datagram, and its body re-wrapped as one.
        inspectDatagram()

        // The input's body re-wrapped in a valid envelope, so mutations reach the record parser.
        inspectRewrapped()

        // (4) Structured: the input as a recipe for records, encoded, decoded and compared; then the
        // encoded frame with one byte changed, inserted or removed (length and CRC fixed up).
        inspectGenerated()

        // Hex round trip (cheap; Hex is part of the module's public surface).
        if input.count <= 256 {
            let text = Hex.encode(input)
            check(text.utf8.count == 2 * input.count, "hex length")
            check(Hex.decode(text) == Array(input), "hex round trip")
        }
    }

    /// Feeds `input` as a stream whose received size grows through `chunkEnds`, consuming what the
    /// framer cuts the way a server does: login first (when `startMode` is .login), then packets.
    func session(_ framer: TeltonikaFramer, startMode: TeltonikaFramer.Mode, chunkEnds: [Int]) -> [Event] {
        var events: [Event] = []
        var mode = startMode
        var consumed = 0
        var lastNeed = 0
        // The framer promised no frame/keep-alive before the stream reaches this size.
        var promised = 0
        for available in chunkEnds {
            check(available >= consumed && available <= input.count, "feed bounds")
            decide: while true {
                let window = slice(input, consumed..<available)
                let result = decide(framer, window, mode: mode)
                switch result {
                case .success(.needMore(let n)):
                    check(n > 0, "needMore(\(n)) with \(window.count) bytes: \(hexOf(window))")
                    let total = window.count + n
                    switch mode {
                    case .login: check(total <= 18, "login needs \(total) bytes in all")
                    case .packets:
                        check(total <= maxDataLength + 12, "packet needs \(total) bytes, cap \(maxDataLength)")
                    }
                    promised = available + n
                    lastNeed = n
                    break decide
                case .success(.keepAlive):
                    check(mode == .packets, "keep-alive in login mode")
                    check(window.count >= 1 && window[0] == 0xFF, "keep-alive on a byte other than FF")
                    check(available >= promised, "keep-alive before the promised bytes arrived")
                    events.append(.keepAlive(at: consumed))
                    consumed += 1
                    promised = 0
                case .success(.frame(let length)):
                    check(length > 0 && length <= window.count, "frame(\(length)) with \(window.count) bytes")
                    check(available >= promised, "frame decided before the promised bytes arrived")
                    switch mode {
                    case .login:
                        check(length == 17 || length == 18, "login frame of \(length) bytes")
                        let frame = slice(input, consumed..<(consumed + length))
                        let parsed = withExactCopy(frame) { raw in attempt { () throws(Codec8Error) in try IMEI.parseLogin(raw) } }
                        if case .failure(let error) = parsed {
                            events.append(.loginRejected(at: consumed, error))
                            return events
                        }
                        events.append(.login(at: consumed, length: length))
                        mode = .packets
                    case .packets:
                        check(length >= 12, "packet frame of \(length) bytes")
                        check(length <= maxDataLength + 12, "frame(\(length)) above the cap \(maxDataLength) + 12")
                        events.append(.frame(at: consumed, length: length))
                    }
                    consumed += length
                    promised = 0
                case .failure(let error):
                    switch (mode, error) {
                    case (.login, .badIMEI(.length)), (.packets, .badPreamble), (.packets, .tooLarge): break
                    default: fatalError("fuzz invariant violated: framer threw \(error) in mode \(mode)")
                    }
                    events.append(.closed(at: consumed, error))
                    return events
                }
            }
        }
        check(consumed <= input.count, "consumed past the input")
        events.append(.pending(at: consumed, need: lastNeed))
        return events
    }

    /// One framer call, checked against the reference model and for early rejection of a large length.
    func decide(
        _ framer: TeltonikaFramer,
        _ window: UnsafeRawBufferPointer,
        mode: TeltonikaFramer.Mode
    ) -> Result<TeltonikaFramer.Decision, Codec8Error> {
        // Short windows get their own exact-size block so an over-read is an ASan report. Longer windows
        // only have their first 8 bytes read (the rest is checked by the whole-input feed's last frame).
        let result =
            window.count <= 64
            ? withExactCopy(window) { raw in attempt { () throws(Codec8Error) in try framer.next(raw, mode: mode) } }
            : attempt { () throws(Codec8Error) in try framer.next(window, mode: mode) }
        let expected = referenceDecision(window, mode: mode, maxDataLength: framer.maxDataLength)
        check(
            result == expected,
            "framer says \(result), reference \(expected) for \(hexOf(window)) mode \(mode) cap \(framer.maxDataLength)"
        )

        if mode == .packets, window.count > 8, case .failure(.tooLarge) = result {
            // Rejected before the body: the 8-byte header alone is enough.
            let header = withExactCopy(slice(window, 0..<8)) { raw in
                attempt { () throws(Codec8Error) in try framer.next(raw, mode: mode) }
            }
            check(header == result, "too_large not decided from the header alone: \(header) vs \(result)")
        }
        if case .success(.frame(let length)) = result, length > 1 {
            // One byte fewer must still be "need 1 more"; exactly the frame must be the frame.
            let short = withExactCopy(slice(window, 0..<(length - 1))) { raw in
                attempt { () throws(Codec8Error) in try framer.next(raw, mode: mode) }
            }
            check(short == .success(.needMore(1)), "frame(\(length)) but \(length - 1) bytes give \(short)")
            let exact = withExactCopy(slice(window, 0..<length)) { raw in
                attempt { () throws(Codec8Error) in try framer.next(raw, mode: mode) }
            }
            check(exact == result, "frame(\(length)) not stable on exactly its bytes: \(exact)")
        }
        // The [UInt8] overload must agree.
        if window.count <= 16 {
            let viaArray = attempt { () throws(Codec8Error) in try framer.next(Array(window), mode: mode) }
            check(viaArray == result, "array overload disagrees")
        }
        return result
    }

    // MARK: Logins

    /// Parses a login; for one the framer cut, only a non-digit may make it fail.
    @discardableResult
    func inspectLogin(_ bytes: UnsafeRawBufferPointer, cutByFramer: Bool) -> IMEI? {
        withExactCopy(bytes) { raw in
            let parsed = attempt { () throws(Codec8Error) in try IMEI.parseLogin(raw) }
            let viaArray = attempt { () throws(Codec8Error) in try IMEI.parseLogin(Array(raw)) }
            check(parsed == viaArray, "parseLogin overloads disagree")
            switch parsed {
            case .success(let imei):
                check(raw.count == 17 || raw.count == 18, "login of \(raw.count) bytes accepted")
                check(imei.digitCount == raw.count - 2, "digit count \(imei.digitCount) for \(raw.count) bytes")
                check(imei.loginFrame == Array(raw), "loginFrame round trip: \(imei.loginFrame) vs \(hexOf(raw))")
                check(imei.digits == Array(raw[2...]), "digits round trip")
                check(imei.description.utf8.count == imei.digitCount, "description length")
                check(IMEI(imei.description) == imei, "IMEI(description) round trip")
                var appended: [UInt8] = [0x41]
                imei.appendDigits(to: &appended)
                check(appended == [0x41] + imei.digits, "appendDigits")
                // Standalone decode of a login must agree.
                let standalone = attempt { () throws(Codec8Error) in try StandaloneFrame.decode(raw) }
                guard case .success(.login(let other)) = standalone, other == imei else {
                    fatalError("fuzz invariant violated: StandaloneFrame.decode gives \(standalone) for login \(imei)")
                }
                return imei
            case .failure(let error):
                checkError(error)
                if cutByFramer {
                    guard case .badIMEI(.nonDigit) = error else {
                        fatalError("fuzz invariant violated: framer-cut login fails with \(error)")
                    }
                }
                return nil
            }
        }
    }

    // MARK: Packet frames

    /// A frame the framer cut in packet mode: its envelope must hold; decode it fully.
    mutating func inspectPacketFrame(_ bytes: UnsafeRawBufferPointer, deviceID: IMEI?) {
        let cap = maxDataLength
        let outcome: Result<Void, Codec8Error> = withExactCopy(bytes) { raw in
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
            let standalone = attempt { () throws(Codec8Error) in try StandaloneFrame.decode(raw, maxDataLength: cap) }
            checkSame(parsed, standalone, raw)
            switch parsed {
            case .success(let frame):
                inspect(frame, raw, deviceID: deviceID)
                return .success(())
            case .failure(let error):
                checkError(error)
                switch error {
                case .truncated, .badPreamble, .tooLarge, .badIMEI:
                    fatalError("fuzz invariant violated: framer-cut frame rejected as \(error): \(hexOf(raw))")
                case .lengthMismatch:
                    // Only a message's inner size field can disagree once the framer cut the frame.
                    check(DeviceMessage.Codec(rawValue: raw[8]) != nil, "envelope length mismatch on a cut frame: \(error)")
                default: break
                }
                return .failure(error)
            }
        }
        if case .failure(.crcMismatch(_, let computed)) = outcome {
            // Fix the CRC and decode again: the body must now be judged on its own.
            var repaired = Array(bytes)
            repaired.replaceSubrange((repaired.count - 4)..., with: [0, 0, UInt8(computed >> 8), UInt8(computed & 0xFF)])
            withExactCopy(repaired) { raw in
                let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
                switch parsed {
                case .success(let frame): inspect(frame, raw, deviceID: deviceID)
                case .failure(let error):
                    checkError(error)
                    switch error {
                    case .truncated, .badPreamble, .tooLarge, .crcMismatch, .badIMEI:
                        fatalError("fuzz invariant violated: CRC-repaired frame rejected as \(error)")
                    default: break
                    }
                }
            }
        }
    }

    /// The whole input as one standalone unit.
    mutating func inspectWhole(cap: Int) {
        withExactCopy(input) { raw in
            let standalone = attempt { () throws(Codec8Error) in try StandaloneFrame.decode(raw, maxDataLength: cap) }
            let viaArray = attempt { () throws(Codec8Error) in
                try StandaloneFrame.withDecoded(Array(raw), maxDataLength: cap) { decoded -> Int in
                    switch decoded {
                    case .keepAlive: 0
                    case .login: 1
                    case .frame(.avl(let p)): 100 + p.recordCount
                    case .frame(.message(let m)): 1000 + Int(m.codec.rawValue)
                    }
                }
            }
            switch (standalone, viaArray) {
            case (.failure(let a), .failure(let b)): check(a == b, "withDecoded error \(b) vs decode \(a)")
            case (.success, .success): break
            default: fatalError("fuzz invariant violated: withDecoded \(viaArray) vs decode \(standalone)")
            }
            switch standalone {
            case .success(.keepAlive):
                check(raw.count == 1 && raw[0] == 0xFF, "keep-alive from \(hexOf(raw))")
            case .success(.login(let imei)):
                check(imei.loginFrame == Array(raw), "standalone login round trip")
            case .success(.frame(let frame)):
                let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
                checkSame(parsed, standalone, raw)
                inspect(frame, raw, deviceID: nil)
            case .failure(let error):
                checkError(error)
                let isLogin = raw.count >= 2 && (raw[0] != 0 || raw[1] != 0)
                if !isLogin && !(raw.count == 1 && raw[0] == 0xFF) {
                    let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
                    checkSame(parsed, standalone, raw)
                }
            }
            // The AVL-only entry point agrees with parse for AVL codecs.
            let packet = attempt { () throws(Codec8Error) in try AVLPacketView(frame: raw, maxDataLength: cap) }
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
            switch (packet, parsed) {
            case (.success(let p), .success(.avl(let q))):
                check(p.codec == q.codec && p.recordCount == q.recordCount, "AVLPacketView vs parse")
            case (.failure(.unsupportedCodec(let c)), _) where DeviceMessage.Codec(rawValue: c) != nil:
                // A message frame: parse judges it as a message (success or a message-body error).
                if case .success(.avl) = parsed { fatalError("fuzz invariant violated: message codec parsed as AVL") }
            case (.failure(let a), .failure(let b)): check(a == b, "AVLPacketView error \(a) vs parse \(b)")
            default: fatalError("fuzz invariant violated: AVLPacketView \(packet) vs parse \(parsed)")
            }
        }
    }

    /// The input's data field wrapped in a correct envelope (length and CRC computed), so the record
    /// and message parsers see mutated bodies. An input that looks like a frame (4 zero bytes first)
    /// contributes the bytes between its length and CRC fields, so seeds map onto themselves.
    mutating func inspectRewrapped() {
        let body: UnsafeRawBufferPointer
        if input.count >= 12 && input[0] == 0 && input[1] == 0 && input[2] == 0 && input[3] == 0 {
            body = slice(input, 8..<(input.count - 4))
        } else {
            body = input
        }
        let crc = CRC16IBM.checksum(body)
        if body.count <= 1024 {  // the bitwise reference is slow under coverage tracing
            check(crc == referenceCRC(body), "CRC16IBM \(crc) vs bitwise \(referenceCRC(body)) over \(hexOf(body))")
        }
        check(CRC16IBM.checksum(Array(body)) == crc, "CRC collection overload")
        if body.count > 1 {
            let cut = Int(hash % UInt64(body.count))
            let first = CRC16IBM.checksum(slice(body, 0..<cut))
            check(CRC16IBM.checksum(slice(body, cut..<body.count), initial: first) == crc, "CRC continuation")
        }
        var frame: [UInt8] = [0, 0, 0, 0]
        let n = UInt32(body.count)
        frame += [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        frame += Array(body)
        frame += [0, 0, UInt8(crc >> 8), UInt8(crc & 0xFF)]
        let cap = Int(UInt32.max)
        withExactCopy(frame) { raw in
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: cap) }
            switch parsed {
            case .success(let f): inspect(f, raw, deviceID: nil)
            case .failure(let error):
                checkError(error)
                switch error {
                case .truncated, .badPreamble, .tooLarge, .crcMismatch, .badIMEI:
                    fatalError("fuzz invariant violated: re-wrapped frame rejected as \(error)")
                case .lengthMismatch:
                    check(DeviceMessage.Codec(rawValue: raw[8]) != nil, "envelope length mismatch on a re-wrapped frame")
                default: break
                }
            }
        }
    }

    /// UDP (PROTOCOL.md §5): the whole input as a datagram must decode or be refused with a known
    /// category, its header fields read back as sent. Then the input's body (as `inspectRewrapped`
    /// takes it) wrapped in a UDP header with a fixed IMEI must decode exactly when the same body in a
    /// TCP envelope decodes as an AVL packet, to the same records.
    mutating func inspectDatagram() {
        withExactCopy(input) { raw in
            switch attempt({ () throws(Codec8Error) in try UDPDatagramView(datagram: raw, maxDataLength: maxDataLength) }) {
            case .success(let datagram):
                check(Int(raw.u16(0)) + 2 == raw.count, "datagram length field \(raw.u16(0)) vs \(raw.count) bytes")
                check(datagram.dataOffset == 8 + datagram.imei.digitCount, "data offset \(datagram.dataOffset)")
                check(datagram.packet.recordCount == Int(raw[datagram.dataOffset + 1]), "datagram record count")
                check(datagram.packet.records.reduce(0) { n, _ in n + 1 } == datagram.packet.recordCount, "datagram records walked")
                let ack = UDPAck(packetID: datagram.packetID, avlPacketID: datagram.avlPacketID, acceptedRecords: 1)
                check(UDPAck(ack.bytes) == ack, "UDP ACK round trip")
            case .failure(let error):
                checkError(error)
            }
        }
        let body: UnsafeRawBufferPointer
        if input.count >= 12 && input[0] == 0 && input[1] == 0 && input[2] == 0 && input[3] == 0 {
            body = slice(input, 8..<(input.count - 4))
        } else {
            body = input
        }
        guard body.count <= 65_000 else { return }
        let imei = IMEI("352093086403655")!
        let datagram = UDPDatagramView.encode(packetID: 0xCAFE, avlPacketID: 7, imei: imei, avlData: Array(body))
        let viaUDP = withExactCopy(datagram) { raw in
            attempt { () throws(Codec8Error) in
                try UDPDatagramView(datagram: raw, maxDataLength: Int(UInt32.max)).packet.records.map { $0.materialize() }
            }
        }
        let crc = CRC16IBM.checksum(body)
        let n = UInt32(body.count)
        var frame: [UInt8] = [0, 0, 0, 0, UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        frame += Array(body)
        frame += [0, 0, UInt8(crc >> 8), UInt8(crc & 0xFF)]
        let viaTCP = withExactCopy(frame) { raw -> Result<[AVLRecord], Codec8Error> in
            attempt { () throws(Codec8Error) -> [AVLRecord] in
                guard case .avl(let packet) = try TeltonikaFrame.parse(raw, maxDataLength: Int(UInt32.max)) else {
                    throw .unsupportedCodec(raw[8])
                }
                return packet.records.map { $0.materialize() }
            }
        }
        switch (viaUDP, viaTCP) {
        case (.success(let a), .success(let b)): check(a == b, "UDP and TCP records differ for the same data array")
        case (.failure, .failure): break
        case (.success, .failure(let e)): fatalError("fuzz invariant violated: UDP decodes a data array TCP refuses (\(e))")
        case (.failure(let e), .success): fatalError("fuzz invariant violated: UDP refuses (\(e)) a data array TCP decodes")
        }
    }

    /// Builds AVL records from the input (read from its end, zeros once exhausted), so the parser sees
    /// structures random mutation rarely builds: large NX values, many elements, every codec.
    mutating func inspectGenerated() {
        var r = Recipe(bytes: input)
        let codec = AVLCodec.allCases[Int(r.u8() % 3)]
        let recordCount = Int(r.u8() % 5)
        var records: [AVLRecord] = []
        for _ in 0..<recordCount {
            var record = AVLRecord(
                timestampMs: r.u64(),
                priority: r.u8(),
                longitudeE7: Int32(bitPattern: r.u32()),
                latitudeE7: Int32(bitPattern: r.u32()),
                altitudeMeters: Int16(bitPattern: r.u16()),
                angleDegrees: r.u16(),
                satellites: r.u8(),
                speedKmh: r.u16(),
                eventIOID: codec == .codec8 ? UInt16(r.u8()) : r.u16(),
                generationType: codec.hasGenerationType ? r.u8() : nil
            )
            let elementCount = Int(r.u8() % 9)
            for _ in 0..<elementCount {
                let kind = Int(r.u8()) % (codec.hasVariableGroup ? 5 : 4)
                let id = codec == .codec8 ? UInt16(r.u8()) : r.u16()
                let value: IOElementValue
                switch kind {
                case 0: value = .u8(r.u8())
                case 1: value = .u16(r.u16())
                case 2: value = .u32(r.u32())
                case 3: value = .u64(r.u64())
                default:
                    let length = Int(r.u16() % 1200)
                    let seed = r.u8()
                    value = .bytes((0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed })
                }
                record.ioElements.append(IOElement(id: id, value: value))
            }
            records.append(record)
        }
        let encoded: [UInt8]
        do throws(AVLEncodingError) {
            encoded = try AVLPacketEncoder.encode(records, codec: codec)
        } catch {
            fatalError("fuzz invariant violated: generated codec \(codec) records do not encode: \(error)")
        }
        // Decoding gives the elements grouped by width (1, 2, 4, 8, variable), order kept within a group.
        let expected = records.map { record -> AVLRecord in
            var record = record
            record.ioElements = (0..<5).flatMap { g in record.ioElements.filter { groupOf($0.value) == g } }
            return record
        }
        check(decodeRecords(encoded, codec: codec) == expected, "generated codec \(codec) records do not round-trip")
        withExactCopy(encoded) { raw in
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: Int(UInt32.max)) }
            guard case .success(let frame) = parsed else { fatalError("fuzz invariant violated: generated frame does not parse") }
            inspect(frame, raw, deviceID: nil)
        }

        // One edit inside the data field, then a valid envelope again.
        var body = Array(encoded[8..<(encoded.count - 4)])
        let position = Int(r.u16()) % body.count
        switch r.u8() % 3 {
        case 0: body[position] ^= max(1, r.u8())
        case 1: body.insert(r.u8(), at: position)
        default: body.remove(at: position)
        }
        let crc = CRC16IBM.checksum(body)
        let n = UInt32(body.count)
        var frame: [UInt8] = [0, 0, 0, 0, UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        frame += body
        frame += [0, 0, UInt8(crc >> 8), UInt8(crc & 0xFF)]
        withExactCopy(frame) { raw in
            switch attempt({ () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: Int(UInt32.max)) }) {
            case .success(let f): inspect(f, raw, deviceID: nil)
            case .failure(let error):
                checkError(error)
                switch error {
                case .truncated, .badPreamble, .tooLarge, .crcMismatch, .badIMEI:
                    fatalError("fuzz invariant violated: edited generated frame rejected as \(error)")
                default: break
                }
            }
        }
    }

    func checkSame(
        _ parsed: Result<TeltonikaFrame, Codec8Error>,
        _ standalone: Result<StandaloneFrame, Codec8Error>,
        _ raw: UnsafeRawBufferPointer
    ) {
        switch (parsed, standalone) {
        case (.failure(let a), .failure(let b)):
            check(a == b, "parse error \(a) vs standalone error \(b) for \(hexOf(raw))")
        case (.success(.avl(let p)), .success(.frame(.avl(let q)))):
            check(p.codec == q.codec && p.recordCount == q.recordCount, "parse vs standalone AVL")
        case (.success(.message(let m)), .success(.frame(.message(let n)))):
            check(m == n, "parse vs standalone message")
        default:
            fatalError("fuzz invariant violated: parse \(parsed) vs standalone \(standalone) for \(hexOf(raw))")
        }
    }

    func checkError(_ error: Codec8Error) {
        check(Codec8Error.allCategories.contains(error.category), "unknown category \(error.category)")
        check(!error.description.isEmpty, "empty error description")
    }

    // MARK: Decoded frames

    mutating func inspect(_ frame: TeltonikaFrame, _ raw: UnsafeRawBufferPointer, deviceID: IMEI?) {
        switch frame {
        case .avl(let packet): inspect(packet, raw, deviceID: deviceID)
        case .message(let message): inspect(message, raw)
        }
    }

    /// Walks an AVL packet, writes it as JSON, re-encodes it in every codec and decodes that again.
    mutating func inspect(_ packet: AVLPacketView, _ raw: UnsafeRawBufferPointer, deviceID: IMEI?) {
        let codec = packet.codec
        check(raw[8] == codec.rawValue, "codec byte")
        check(packet.recordCount == Int(raw[9]), "record count \(packet.recordCount) vs NoD1 \(raw[9])")
        check(packet.recordCount == Int(raw[raw.count - 5]), "record count vs NoD2")
        check(AVLCodec(rawValue: codec.rawValue) == codec && !codec.name.isEmpty, "codec name")
        var records: [AVLRecord] = []
        records.reserveCapacity(packet.recordCount)
        var walked = 0
        for record in packet.records {
            walked += 1
            check(record.codec == codec, "record codec")
            check((record.generationType != nil) == codec.hasGenerationType, "generation type presence for codec \(codec)")
            if codec == .codec8 { check(record.eventIOID <= 0xFF, "codec 8 event id \(record.eventIOID)") }
            var count = 0
            var lastGroup = 0
            var variableBytes = 0
            for element in record.ioElements {
                count += 1
                if codec == .codec8 { check(element.id <= 0xFF, "codec 8 IO id \(element.id)") }
                let group: Int
                switch element.value {
                case .u8: group = 0
                case .u16: group = 1
                case .u32: group = 2
                case .u64: group = 3
                case .bytes(let b):
                    group = 4
                    check(codec.hasVariableGroup, "variable-length value in codec \(codec)")
                    check(b.count <= 0xFFFF, "variable value of \(b.count) bytes")
                    if let base = b.baseAddress, let frameBase = raw.baseAddress {
                        check(base >= frameBase && base + b.count <= frameBase + raw.count, "NX value outside the frame")
                    }
                    for byte in b { variableBytes &+= Int(byte) }  // touch every byte (ASan)
                }
                check(group >= lastGroup, "IO groups out of wire order")
                lastGroup = group
            }
            check(count == record.ioTotal, "walked \(count) IO elements, declared \(record.ioTotal)")
            let owned = record.materialize()
            check(owned.ioElements.count == count, "materialize dropped elements")
            check(owned.generationType == record.generationType && owned.timestampMs == record.timestampMs, "materialize fields")
            records.append(owned)

            jsonOut.removeAll(keepingCapacity: true)
            json.append(record, deviceID: deviceID, to: &jsonOut)
            check(jsonOut.first == UInt8(ascii: "{") && jsonOut.last == UInt8(ascii: "}"), "JSON not an object")
            check(String(validating: jsonOut, as: UTF8.self) != nil, "JSON not UTF-8")
            _ = variableBytes
        }
        check(walked == packet.recordCount, "walked \(walked) records, count \(packet.recordCount)")

        // Same codec: must encode, byte-identical to the frame, and decode to equal records.
        let encoded: [UInt8]
        do throws(AVLEncodingError) {
            encoded = try AVLPacketEncoder.encode(records, codec: codec)
        } catch {
            fatalError("fuzz invariant violated: decoded codec \(codec) records do not re-encode: \(error)")
        }
        let again = decodeRecords(encoded, codec: codec)
        check(again == records, "re-encoded codec \(codec) records decode differently")
        check(encoded == Array(raw), "re-encoded frame differs: \(Hex.encode(encoded.prefix(64))) vs \(hexOf(raw))")

        // Other codecs: when encodable, records must survive (generation type follows the target codec).
        for target in AVLCodec.allCases where target != codec {
            let expected = records.map { r -> AVLRecord in
                var r = r
                r.generationType = target.hasGenerationType ? (r.generationType ?? 0) : nil
                return r
            }
            do throws(AVLEncodingError) {
                let bytes = try AVLPacketEncoder.encode(records, codec: target)
                check(decodeRecords(bytes, codec: target) == expected, "codec \(codec) → \(target) changes records")
            } catch {
                // 8E holds everything; 16 holds everything from 8. Otherwise the refusal must be justified.
                check(target != .codec8Extended, "codec \(codec) records not encodable as 8E: \(error)")
                check(!(codec == .codec8 && target == .codec16), "codec 8 records not encodable as 16: \(error)")
                switch error {
                case .idTooWide(let id):
                    check(target == .codec8 && id > 0xFF, "idTooWide(\(id)) for \(target)")
                case .tooManyElements(_, let n):
                    check(target.countSize == 1 && n > 0xFF, "tooManyElements(\(n)) for \(target)")
                case .variableValueNotEncodable:
                    check(!target.hasVariableGroup, "variable value refused by \(target)")
                case .tooManyRecords(let n):
                    fatalError("fuzz invariant violated: tooManyRecords(\(n)) from a decoded packet")
                }
            }
        }
    }

    func decodeRecords(_ bytes: [UInt8], codec: AVLCodec) -> [AVLRecord] {
        withExactCopy(bytes) { raw in
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(raw, maxDataLength: Int(UInt32.max)) }
            guard case .success(.avl(let packet)) = parsed else {
                fatalError("fuzz invariant violated: encoder output (codec \(codec)) does not decode: \(parsed) \(hexOf(raw))")
            }
            check(packet.codec == codec, "encoder wrote codec \(packet.codec), asked \(codec)")
            return packet.records.map { $0.materialize() }
        }
    }

    /// A device message: fields readable, re-encoding decodes to the same message.
    func inspect(_ message: DeviceMessage, _ raw: UnsafeRawBufferPointer) {
        check(message.codec.rawValue == raw[8], "message codec")
        check(message.type == raw[10], "message type")
        check(!message.codec.name.isEmpty, "message codec name")
        _ = message.text
        switch message.codec {
        case .codec12: check(message.imei == nil && message.timestampSeconds == nil, "codec 12 fields")
        case .codec13: check(message.imei == nil && message.timestampSeconds != nil, "codec 13 fields")
        case .codec14: check(message.imei != nil && message.timestampSeconds == nil, "codec 14 fields")
        case .codec15: check(message.imei != nil && message.timestampSeconds != nil, "codec 15 fields")
        }
        let imeiEncodable = message.imei.map { IMEI($0) != nil } ?? true
        let encoded = message.encoded()
        withExactCopy(encoded) { enc in
            let parsed = attempt { () throws(Codec8Error) in try TeltonikaFrame.parse(enc, maxDataLength: Int(UInt32.max)) }
            guard case .success(.message(let again)) = parsed else {
                fatalError("fuzz invariant violated: encoded message does not decode: \(parsed)")
            }
            check(again.codec == message.codec && again.type == message.type, "message codec/type round trip")
            check(again.timestampSeconds == message.timestampSeconds, "message timestamp round trip")
            check(again.payload == message.payload, "message payload round trip")
            if imeiEncodable {
                check(
                    again.imei == message.imei,
                    "message IMEI round trip: \(String(describing: again.imei)) vs \(String(describing: message.imei))"
                )
                if raw[9] == 1 && raw[raw.count - 5] == 1 {
                    check(Array(enc) == Array(raw), "message re-encoding differs: \(hexOf(enc)) vs \(hexOf(raw))")
                }
            }
        }
    }
}
