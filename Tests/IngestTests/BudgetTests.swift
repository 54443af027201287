import Testing

@testable import Ingest

/// The per-address failed-login budget and the shared buffer budget, on a fake clock.
struct AddressAndBufferBudgetTests {
    static let second: UInt64 = 1_000_000_000

    @Test func testFailedLoginsUseUpAnAddressBudgetWhichRefills() {
        var limiter = LoginFailureLimiter(budgetPerMinute: 3)
        #expect(limiter.admits("10.0.0.1", now: 0))
        for _ in 0..<3 { limiter.failed("10.0.0.1", now: 0) }
        #expect(!limiter.admits("10.0.0.1", now: 0))
        #expect(limiter.admits("10.0.0.2", now: 0), "another address is not affected")
        // One token refills in 20 s (3 per minute).
        #expect(!limiter.admits("10.0.0.1", now: 20 * Self.second - 1))
        #expect(limiter.admits("10.0.0.1", now: 20 * Self.second))
        limiter.failed("10.0.0.1", now: 20 * Self.second)
        #expect(!limiter.admits("10.0.0.1", now: 20 * Self.second))
    }

    /// A scan from many addresses does not grow the table past its bound.
    @Test func testTheAddressTableIsBounded() {
        var limiter = LoginFailureLimiter(budgetPerMinute: 3, maxAddresses: 100)
        for i in 0..<10_000 { limiter.failed("10.0.\(i / 256).\(i % 256)", now: UInt64(i)) }
        #expect(limiter.count <= 100)
        // The newest addresses are remembered.
        for _ in 0..<2 { limiter.failed("10.0.39.15", now: 10_000) }
        #expect(!limiter.admits("10.0.39.15", now: 10_000))
    }

    @Test func testTheBufferBudgetRefusesGrowthPastItsLimitOnly() {
        let budget = BufferBudget(limit: 10_000)
        #expect(budget.recharge(from: 0, to: 6_000))
        #expect(!budget.recharge(from: 0, to: 5_000))
        #expect(budget.inUse == 6_000)
        #expect(budget.recharge(from: 0, to: 4_000))
        #expect(budget.recharge(from: 6_000, to: 100))
        #expect(budget.inUse == 4_100)
        #expect(budget.recharge(from: 4_000, to: 0) && budget.recharge(from: 100, to: 0))
        #expect(budget.inUse == 0)
    }
}
