/// What every session shares for downlink commands: the store, the timings, the metrics.
import Codec8
import NIOCore

/// Downlink commands for the sessions of one server (nil in ``SessionEnvironment`` with `COMMANDS=off`).
final class CommandDelivery: Sendable {
    let store: any CommandStore
    let metrics: CommandMetrics
    let timeout: TimeAmount
    let lateGrace: TimeAmount
    let loginGrace: TimeAmount

    init(store: any CommandStore, metrics: CommandMetrics, timeout: TimeAmount, lateGrace: TimeAmount, loginGrace: TimeAmount) {
        self.store = store
        self.metrics = metrics
        self.timeout = timeout
        self.lateGrace = lateGrace
        self.loginGrace = loginGrace
    }

    /// A new session's slot.
    func makeSlot() -> CommandSlot { CommandSlot(timeout: timeout, lateGrace: lateGrace) }

    /// What a device message answers, if it is a Codec 12/14 response: nil for anything else. A Codec 14
    /// frame answers only when it carries the session's IMEI.
    static func answer(_ message: DeviceMessage, from imei: IMEI) -> CommandSlot.Answer? {
        switch (message.codec, message.type) {
        case (.codec12, DeviceMessage.typeResponse): return .response
        case (.codec14, DeviceMessage.typeResponse) where message.imei == imei.description: return .response
        case (.codec14, DeviceMessage.typeNotAcknowledged) where message.imei == imei.description: return .notAcknowledged
        default: return nil
        }
    }

    /// Whether a device message is a response at all (a type 0x06/0x11 frame of Codec 12/14).
    static func isResponse(_ message: DeviceMessage) -> Bool {
        (message.codec == .codec12 || message.codec == .codec14)
            && (message.type == DeviceMessage.typeResponse || message.type == DeviceMessage.typeNotAcknowledged)
    }
}

/// Sent to a session whose device has a command queued (a wake-up notice): look at its queue.
struct CommandWake: Sendable {}
