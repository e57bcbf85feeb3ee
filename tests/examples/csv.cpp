// Test that the header is self-contained.
#include "upload_progress/csv.hpp"

#include "catch.hpp"

#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;
using namespace std::string_view_literals;

namespace {

using fields = std::vector<std::string>;

struct rec {
    std::uint64_t line;
    std::vector<std::string> fields;
    bool malformed = false;

    bool operator==(const rec&) const = default;
};

// Every record, copied out; also checks that the pre-scan counts the same records.
std::vector<rec> read_all(std::string_view text)
{
    std::vector<rec> out;
    upload::csv::reader reader(text);
    upload::csv::record r;
    while (reader.next(r))
        out.push_back({r.line, fields(r.fields.begin(), r.fields.end()), r.malformed});
    CHECK(reader.offset() == text.size());
    CHECK(upload::csv::count_records(text) == out.size());
    return out;
}

} // namespace

TEST_CASE("csv: plain fields, LF line ends", "[csv]")
{
    CHECK(read_all("a,b,c\n1,2,3\n")
          == std::vector<rec>{{1, {"a", "b", "c"}}, {2, {"1", "2", "3"}}});
}

TEST_CASE("csv: the last line end is optional and makes no empty record", "[csv]")
{
    CHECK(read_all("a,b\n1,2") == std::vector<rec>{{1, {"a", "b"}}, {2, {"1", "2"}}});
    CHECK(read_all("a,b\n1,2\n") == std::vector<rec>{{1, {"a", "b"}}, {2, {"1", "2"}}});
    CHECK(read_all("").empty());
}

TEST_CASE("csv: CRLF, LF and bare CR all end a line, and count one line each", "[csv]")
{
    CHECK(read_all("a,b\r\n1,2\r\n") == std::vector<rec>{{1, {"a", "b"}}, {2, {"1", "2"}}});
    CHECK(read_all("a\r\nb\nc\rd")
          == std::vector<rec>{{1, {"a"}}, {2, {"b"}}, {3, {"c"}}, {4, {"d"}}});
    // No CR is left on the last field of a CRLF line.
    CHECK(read_all("x,y\r\n")[0].fields == fields{"x", "y"});
    // A bare CR in the middle of an unquoted field ends the record there.
    CHECK(read_all("ab\rcd,e\n") == std::vector<rec>{{1, {"ab"}}, {2, {"cd", "e"}}});
}

TEST_CASE("csv: empty fields and trailing commas", "[csv]")
{
    CHECK(read_all("a,,b\n")[0].fields == fields{"a", "", "b"});
    CHECK(read_all("a,b,\n")[0].fields == fields{"a", "b", ""});
    CHECK(read_all(",\n")[0].fields == fields{"", ""});
    CHECK(read_all("a,b,")[0].fields == fields{"a", "b", ""});
}

TEST_CASE("csv: blank lines are skipped, not records, and still counted as lines", "[csv]")
{
    CHECK(read_all("\n\na\n\n\nb\n\n") == std::vector<rec>{{3, {"a"}}, {6, {"b"}}});
    CHECK(read_all("a\r\n\r\n\r\nb\r\n") == std::vector<rec>{{1, {"a"}}, {4, {"b"}}});
    CHECK(read_all("a\r\rb") == std::vector<rec>{{1, {"a"}}, {3, {"b"}}});
    CHECK(read_all("\n\n\r\n").empty());
    // A line of spaces is a record of one field; a quoted empty field is a record too.
    CHECK(read_all("  \n\"\"\n") == std::vector<rec>{{1, {"  "}}, {2, {""}}});
}

TEST_CASE("csv: a UTF-8 BOM at the start is skipped, elsewhere it is data", "[csv]")
{
    CHECK(read_all("\xEF\xBB\xBFsku,name\n") == std::vector<rec>{{1, {"sku", "name"}}});
    CHECK(read_all("\xEF\xBB\xBF").empty());
    CHECK(read_all("\xEF\xBB\xBF\"q\"\n") == std::vector<rec>{{1, {"q"}}});
    CHECK(read_all("a\n\xEF\xBB\xBF" "b\n")[1].fields == fields{"\xEF\xBB\xBF" "b"});
}

TEST_CASE("csv: quoted fields may hold commas, and keep their spaces", "[csv]")
{
    CHECK(read_all("\"a,b\",c\n")[0].fields == fields{"a,b", "c"});
    CHECK(read_all("\" x \",\"\"\n")[0].fields == fields{" x ", ""});
    CHECK(read_all("1,\"last\"")[0].fields == fields{"1", "last"});
    CHECK(read_all("\"a\"\r\n\"b\"\r\n") == std::vector<rec>{{1, {"a"}}, {2, {"b"}}});
}

TEST_CASE("csv: doubled quotes inside quotes read as one quote", "[csv]")
{
    CHECK(read_all(R"("say ""hi""",x)"
                   "\n")[0]
              .fields
          == fields{R"(say "hi")", "x"});
    // `""""` is one quote; `""""""` is two.
    CHECK(read_all("\"\"\"\",\"\"\"\"\"\"")[0].fields == fields{"\"", "\"\""});
    // Several escaped fields in one record, and the views of one record survive reading it.
    const auto all = read_all(R"("a""b","c""d",e,"f""")"
                              "\n"
                              R"("g""h")");
    CHECK(all[0].fields == fields{R"(a"b)", R"(c"d)", "e", R"(f")"});
    CHECK(all[1].fields == fields{R"(g"h)"});
}

TEST_CASE("csv: line ends inside quotes are data, and line numbers keep counting", "[csv]")
{
    const auto all = read_all("h1,h2\n"
                              "1,\"two\nlines\"\n"
                              "2,\"crlf\r\ninside\"\r\n"
                              "3,\"cr\rinside\"\n"
                              "4,\"\n\n\n\"\n"
                              "5,end\n");
    CHECK(all == std::vector<rec>{{1, {"h1", "h2"}},
                                  {2, {"1", "two\nlines"}},
                                  {4, {"2", "crlf\r\ninside"}},
                                  {6, {"3", "cr\rinside"}},
                                  {8, {"4", "\n\n\n"}},
                                  {12, {"5", "end"}}});
}

TEST_CASE("csv: UTF-8 passes through untouched", "[csv]")
{
    CHECK(read_all("Ünïcødé,\"日本, 語\",😀\n")[0].fields == fields{"Ünïcødé", "日本, 語", "😀"});
}

TEST_CASE("csv: a quote inside an unquoted field makes that record malformed", "[csv]")
{
    const auto all = read_all("a,b\n"
                              "x,ab\"c,d\n"
                              "y,z\n");
    CHECK(all == std::vector<rec>{{1, {"a", "b"}}, {2, {"x"}, true}, {3, {"y", "z"}}});
    // Also when the quote is the field's last byte, and when it is the record's first field.
    CHECK(read_all("ab\",c\nd\n") == std::vector<rec>{{1, {}, true}, {2, {"d"}}});
}

TEST_CASE("csv: text after a closing quote makes that record malformed", "[csv]")
{
    const auto all = read_all("1,\"ok\"x,2\n"
                              "2,\"a\" ,3\r\n"
                              "3,fine\n");
    CHECK(all == std::vector<rec>{{1, {"1"}, true}, {2, {"2"}, true}, {3, {"3", "fine"}}});
}

TEST_CASE("csv: a malformed record says what is wrong, and in which field", "[csv]")
{
    const std::string text = "a,b\"c,d\n"       // a quote in field 1 (0-based)
                             "\"x\"y,z\n"        // text after the closing quote of field 0
                             "1,2,\"3\" ,4\n"    // a space after the closing quote of field 2
                             "ok,\"fine\"\n";
    upload::csv::reader reader(text);
    upload::csv::record r;
    using upload::csv::fault;
    const std::vector<std::pair<fault, std::size_t>> want{{fault::quote_in_unquoted_field, 1},
                                                          {fault::text_after_closing_quote, 0},
                                                          {fault::text_after_closing_quote, 2},
                                                          {fault::none, 0}};
    for (const auto& [what, field] : want) {
        REQUIRE(reader.next(r));
        INFO("line " << r.line);
        CHECK(r.malformed == (what != fault::none));
        CHECK(r.fault == what);
        CHECK(r.fault_field == field);
    }
    CHECK_FALSE(reader.next(r));
}

TEST_CASE("csv: after malformed quotes, reading resumes at the next physical line", "[csv]")
{
    // The stray quote would open a quoted field if it were honoured; it is not.
    CHECK(read_all("a\"b,c\nnext,1\n\"q\",2\n")
          == std::vector<rec>{{1, {}, true}, {2, {"next", "1"}}, {3, {"q", "2"}}});
    // A fault after a multi-line quoted field: the record spans lines 1-2, the next is line 3.
    CHECK(read_all("1,\"two\nlines\"oops,x\n2,y\n")
          == std::vector<rec>{{1, {"1"}, true}, {3, {"2", "y"}}});
    // A fault on the last line, with no line end.
    CHECK(read_all("a,b\n\"x\"y") == std::vector<rec>{{1, {"a", "b"}}, {2, {}, true}});
}

TEST_CASE("csv: a quoted field open at the end of the text is fatal, naming its line", "[csv]")
{
    const auto line_of = [](std::string_view text) -> std::uint64_t {
        try {
            upload::csv::reader reader(text);
            upload::csv::record r;
            while (reader.next(r)) {
            }
        } catch (const upload::csv::error& e) {
            CHECK_THROWS_AS(upload::csv::count_records(text), upload::csv::error);
            return e.line();
        }
        return 0;
    };
    CHECK(line_of("\"") == 1);
    CHECK(line_of("a,b\n1,\"open\n2,x\n3,y\n") == 2);
    // The quote opens on line 3, in a record that starts on line 2.
    CHECK(line_of("a,b\n\"x\ny\",\"open\n\n") == 3);
    // A doubled quote at the very end does not close the field.
    CHECK(line_of("\"abc\"\"") == 1);
    CHECK_THROWS_WITH(upload::csv::count_records("h\n\n\"x"),
                      "unterminated quoted field starting at line 3");
}

TEST_CASE("csv: count_records respects quotes", "[csv]")
{
    CHECK(upload::csv::count_records("a\n\"1\n2\n3\"\nb\n\n") == 3);
    CHECK(upload::csv::count_records("\xEF\xBB\xBF\n\n") == 0);
    CHECK(upload::csv::count_records("x,\"a\"\"\nb\"\ny") == 2);
}

TEST_CASE("csv: skip() and next() can be mixed", "[csv]")
{
    upload::csv::reader reader("h\n\"a\nb\",1\nc,2\n");
    upload::csv::record r;
    REQUIRE(reader.skip());
    REQUIRE(reader.skip());
    REQUIRE(reader.next(r));
    CHECK(r.line == 4);
    CHECK(std::vector<std::string>(r.fields.begin(), r.fields.end()) == fields{"c", "2"});
    CHECK_FALSE(reader.next(r));
    CHECK_FALSE(reader.skip());
}
