// benchmarks/upload_bench.cpp
// Throughput of the upload example's import core on a generated 1,000,000-row CSV (~50 MB):
// the row-counting pre-scan, the CSV reader alone, and import_csv into a fresh SQLite file
// (all inserts) and again into the same file (all updates). Each figure is the median of
// several runs; the import runs also record the gaps between progress calls.
// See benchmarks/README.md.
// SPDX-License-Identifier: BSL-1.0
#include "upload_progress/csv.hpp"
#include "upload_progress/import.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <time.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;
using ms = std::chrono::duration<double, std::milli>;

// Deterministic product rows in shuffled sku order (so the upserts do not just append to the
// B-tree), about 50 bytes each; one name in 20 is quoted around a comma, one in 50 holds
// doubled quotes.
std::string make_csv(std::size_t rows, bool sorted)
{
    static constexpr std::array<std::string_view, 12> adjectives{
        "Stainless", "Compact", "Heavy-duty", "Deluxe", "Portable", "Classic",
        "Wireless",  "Organic", "Premium",    "Mini",   "Vintage",  "Smart"};
    static constexpr std::array<std::string_view, 8> colours{
        "Red", "Black", "Olive", "Silver", "Navy", "White", "Copper", "Sand"};
    static constexpr std::array<std::string_view, 12> nouns{
        "Widget", "Kettle", "Lamp",    "Backpack", "Blender", "Drill",
        "Mug",    "Router", "Speaker", "Notebook", "Jacket",  "Skillet"};
    std::mt19937_64 rng(20240501);
    std::vector<std::uint32_t> order(rows);
    std::iota(order.begin(), order.end(), 0U);
    if (!sorted)
        std::shuffle(order.begin(), order.end(), rng);

    std::string csv = "sku,name,price,quantity\n";
    csv.reserve(rows * 52 + 64);
    char line[160];
    for (std::size_t i = 0; i < rows; ++i) {
        const auto r = rng();
        const std::string_view adj = adjectives[r % adjectives.size()];
        const std::string_view noun = nouns[(r >> 8) % nouns.size()];
        const std::string_view colour = colours[(r >> 56) % colours.size()];
        const unsigned model = static_cast<unsigned>((r >> 16) % 1000);
        const unsigned price = static_cast<unsigned>((r >> 26) % 99950 + 50); // cents
        const unsigned quantity = static_cast<unsigned>((r >> 44) % 1000);
        int n = 0;
        if (i % 50 == 0)
            n = std::snprintf(line, sizeof line,
                              "SKU-%07u,\"%.*s %.*s %u\"\" x %u\"\", %.*s\",%u.%02u,%u\n",
                              order[i], static_cast<int>(adj.size()), adj.data(),
                              static_cast<int>(noun.size()), noun.data(), model, model % 40,
                              static_cast<int>(colour.size()), colour.data(),
                              price / 100, price % 100, quantity);
        else if (i % 20 == 0)
            n = std::snprintf(line, sizeof line,
                              "SKU-%07u,\"%.*s %.*s, model %u, %.*s\",%u.%02u,%u\n",
                              order[i], static_cast<int>(adj.size()), adj.data(),
                              static_cast<int>(noun.size()), noun.data(), model,
                              static_cast<int>(colour.size()), colour.data(), price / 100,
                              price % 100, quantity);
        else
            n = std::snprintf(line, sizeof line, "SKU-%07u,%.*s %.*s %u %.*s,%u.%02u,%u\n",
                              order[i], static_cast<int>(adj.size()), adj.data(),
                              static_cast<int>(noun.size()), noun.data(), model,
                              static_cast<int>(colour.size()), colour.data(), price / 100,
                              price % 100, quantity);
        csv.append(line, static_cast<std::size_t>(n));
    }
    return csv;
}

// CPU time of the whole process (the benchmark runs one thread): unlike the wall clock it
// hardly moves when other jobs share the machine.
double cpu_ms()
{
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::filesystem::path temp_db_path(int run)
{
    return std::filesystem::temp_directory_path()
           / ("upload_bench_" + std::to_string(::getpid()) + "_" + std::to_string(run) + ".db");
}

void remove_db(const std::filesystem::path& path)
{
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(path.string() + suffix, ec);
}

struct import_run {
    double total_ms = 0;    // import_csv, call to return
    double cpu_ms = 0;      // the same, CPU time
    double tail_ms = 0;     // from the last progress call to the return (count, COMMIT)
    double max_gap_ms = 0;  // between progress calls
    double min_gap_ms = 0;  // between progress calls, the last one not counted
    std::size_t calls = 0;
    upload::summary result{};
};

import_run timed_import(common::sqlite::db& db, std::string_view csv)
{
    std::vector<clock_type::time_point> calls;
    upload::import_hooks hooks;
    hooks.on_progress = [&](const upload::progress&) { calls.push_back(clock_type::now()); };
    import_run r;
    const double cpu_start = cpu_ms();
    const auto start = clock_type::now();
    r.result = upload::import_csv(db, csv, hooks);
    const auto end = clock_type::now();
    r.cpu_ms = cpu_ms() - cpu_start;
    r.total_ms = ms(end - start).count();
    r.tail_ms = ms(end - calls.back()).count();
    r.calls = calls.size();
    r.min_gap_ms = 1e9;
    for (std::size_t i = 1; i < calls.size(); ++i) {
        const double gap = ms(calls[i] - calls[i - 1]).count();
        r.max_gap_ms = std::max(r.max_gap_ms, gap);
        if (i + 1 < calls.size())
            r.min_gap_ms = std::min(r.min_gap_ms, gap);
    }
    return r;
}

} // namespace

int main(int argc, char** argv)
{
    bool smoke = false;
    std::size_t rows = 1'000'000;
    int runs = 3;
    bool sorted = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--smoke") {
            smoke = true;
        } else if (arg == "--sorted") {
            sorted = true;
        } else if (arg == "--rows" && i + 1 < argc) {
            rows = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--runs" && i + 1 < argc) {
            runs = std::max(1, std::atoi(argv[++i]));
        } else {
            std::fprintf(stderr,
                         "usage: upload_bench [--smoke] [--sorted] [--rows N] [--runs N]\n");
            return 2;
        }
    }
    if (smoke) {
        rows = 10'000;
        runs = 1;
    }
    const int parse_runs = smoke ? 1 : std::max(runs, 5);

    auto t0 = clock_type::now();
    const std::string csv = make_csv(rows, sorted);
    std::printf("upload_bench: %zu rows (%s sku order), %.1f MB (MB = 10^6 bytes), generated in "
                "%.0f ms; median of %d runs (parsing: %d); rows/s by the wall clock\n\n",
                rows, sorted ? "sorted" : "shuffled", static_cast<double>(csv.size()) / 1e6,
                ms(clock_type::now() - t0).count(), runs, parse_runs);
    int failures = 0;
    const auto expect = [&](bool ok, const char* what) {
        if (!ok) {
            std::fprintf(stderr, "check failed: %s\n", what);
            ++failures;
        }
    };

    // The pre-scan alone (csv::count_records) and the reader alone (every field touched).
    std::vector<double> scan_ms;
    std::vector<double> scan_cpu;
    std::vector<double> parse_ms;
    std::vector<double> parse_cpu;
    for (int r = 0; r < parse_runs; ++r) {
        double c0 = cpu_ms();
        t0 = clock_type::now();
        const std::uint64_t records = upload::csv::count_records(csv);
        scan_ms.push_back(ms(clock_type::now() - t0).count());
        scan_cpu.push_back(cpu_ms() - c0);
        expect(records == rows + 1, "pre-scan counts every row and the header");

        c0 = cpu_ms();
        t0 = clock_type::now();
        upload::csv::reader reader(csv);
        upload::csv::record rec;
        std::size_t n = 0;
        std::size_t bytes = 0;
        while (reader.next(rec)) {
            ++n;
            for (const auto f : rec.fields)
                bytes += f.size();
        }
        parse_ms.push_back(ms(clock_type::now() - t0).count());
        parse_cpu.push_back(cpu_ms() - c0);
        expect(n == rows + 1 && bytes > rows * 30, "reader returns every row");
    }

    // import_csv into a fresh file, then the same file again (every row an update).
    std::vector<import_run> inserts;
    std::vector<import_run> updates;
    for (int r = 0; r < runs; ++r) {
        const auto path = temp_db_path(r);
        remove_db(path);
        // A connection of its own for each import, as the server opens one for each job: the
        // second import does not find the pages in the first one's cache.
        {
            common::sqlite::db db(path.string());
            upload::ensure_schema(db);
            inserts.push_back(timed_import(db, csv));
        }
        {
            common::sqlite::db db(path.string());
            updates.push_back(timed_import(db, csv));
        }
        remove_db(path);
        const auto& ins = inserts.back().result;
        const auto& upd = updates.back().result;
        expect(ins.rows == rows && ins.inserted == rows && ins.updated == 0 && ins.errors == 0,
               "first import inserts every row");
        expect(upd.rows == rows && upd.inserted == 0 && upd.updated == rows && upd.errors == 0,
               "second import updates every row");
    }

    const double mb = static_cast<double>(csv.size()) / 1e6;
    const auto row = [&](const char* stage, double wall, double cpu) {
        const auto n = static_cast<double>(rows);
        std::printf("| %-30s | %8.0f | %8.0f | %12.0f | %12.0f | %8.0f |\n", stage, wall, cpu,
                    n / (wall / 1e3), n / (cpu / 1e3), mb / (wall / 1e3));
    };
    const auto pick = [](const std::vector<import_run>& v, double import_run::*field) {
        std::vector<double> xs;
        for (const auto& r : v)
            xs.push_back(r.*field);
        return median(xs);
    };
    std::printf("| %-30s | %8s | %8s | %12s | %12s | %8s |\n", "stage", "wall ms", "CPU ms",
                "rows/s", "rows/CPU-s", "MB/s");
    std::printf("|--------------------------------|---------:|---------:|-------------:|"
                "-------------:|---------:|\n");
    row("pre-scan (count_records)", median(scan_ms), median(scan_cpu));
    row("parse (csv::reader)", median(parse_ms), median(parse_cpu));
    row("import_csv, new file (inserts)", pick(inserts, &import_run::total_ms),
        pick(inserts, &import_run::cpu_ms));
    row("import_csv, again (updates)", pick(updates, &import_run::total_ms),
        pick(updates, &import_run::cpu_ms));

    double max_gap = 0;
    double min_gap = 1e9;
    for (const auto* runs_of : {&inserts, &updates})
        for (const auto& r : *runs_of) {
            max_gap = std::max(max_gap, r.max_gap_ms);
            min_gap = std::min(min_gap, r.min_gap_ms);
        }
    std::printf("\nimport_csv after the last row (count, COMMIT, WAL checkpoint), median: "
                "inserts %.0f ms, updates %.0f ms\n",
                pick(inserts, &import_run::tail_ms), pick(updates, &import_run::tail_ms));
    std::printf("progress calls per import: %zu; gaps between calls over all %zu imports: "
                "max %.1f ms, min %.1f ms (the last call not counted); rule: 100..250 ms -> %s\n",
                inserts.front().calls, inserts.size() + updates.size(), max_gap,
                min_gap > 1e8 ? 0.0 : min_gap,
                max_gap <= 250 && (min_gap > 1e8 || min_gap >= 100) ? "kept" : "BROKEN");
    return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
