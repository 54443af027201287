/// Which connection each logged-in IMEI is on, so a newer login replaces the older connection.
import Codec8
import NIOConcurrencyHelpers
import NIOCore

/// Which connection each logged-in IMEI has on this instance. A device that logs in again has
/// abandoned its old socket: the newer connection replaces the older one, which is closed.
final class DeviceRegistry: Sendable {
    private let channels = NIOLockedValueBox<[IMEI: any Channel]>([:])
    /// Told the number of devices online after each change (`teltonika_devices_online`).
    private let onCount: @Sendable (Int) -> Void

    init(onCount: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.onCount = onCount
    }

    /// Records `channel` as `imei`'s connection; returns the connection it replaces, if any.
    func register(_ imei: IMEI, channel: any Channel) -> (any Channel)? {
        channels.withLockedValue { map in
            let old = map[imei]
            map[imei] = channel
            onCount(map.count)
            return old.flatMap { $0 === channel ? nil : $0 }
        }
    }

    /// Forgets `channel` if it is still `imei`'s connection.
    func remove(_ imei: IMEI, channel: any Channel) {
        channels.withLockedValue { map in
            if let current = map[imei], current === channel {
                map[imei] = nil
                onCount(map.count)
            }
        }
    }

    var count: Int { channels.withLockedValue { $0.count } }

    /// `imei`'s connection, if it is logged in here.
    func connection(of imei: IMEI) -> (any Channel)? { channels.withLockedValue { $0[imei] } }

    /// Every logged-in connection.
    var allConnections: [any Channel] { channels.withLockedValue { Array($0.values) } }

    /// The connections of the logged-in IMEIs for which `matches` holds.
    func connections(where matches: (IMEI) -> Bool) -> [any Channel] {
        channels.withLockedValue { map in map.compactMap { matches($0.key) ? $0.value : nil } }
    }
}
