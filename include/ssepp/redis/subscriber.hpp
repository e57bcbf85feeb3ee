// ssepp/redis/subscriber.hpp
// ssepp::redis::subscriber: a connection in pub/sub mode. Channels and patterns with a message
// handler each; after a reconnect it subscribes again by itself, then tells the caller to catch up.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_SUBSCRIBER_HPP
#define SSEPP_REDIS_SUBSCRIBER_HPP

#include <ssepp/redis/connection.hpp>

#include <ssepp/detail/asio.hpp>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace ssepp::redis {

/// A pub/sub link of its own (a subscribed Redis connection runs no other command). Same
/// threading and lifetime rules as connection: call it on its executor; dropping the last
/// shared_ptr closes it.
///
/// options::on_connect means here: every subscription is active on a new link (the first, or
/// one after a reconnect). From then on every message published to those channels is
/// delivered; what was published between the loss of the previous link and this call was
/// missed, so this is where the caller catches up (from a Redis stream, say).
/// options::on_disconnect: as for connection.
class subscriber : public std::enable_shared_from_this<subscriber> {
    struct pass_key {};

public:
    using executor_type = asio::any_io_executor;
    using options = connection::options;
    /// (channel, payload): the channel the message was published to (for a pattern, the
    /// matching channel). Both views last for the call only.
    using message_handler = std::function<void(std::string_view channel, std::string_view payload)>;
    /// Once: success when the server confirmed the subscription (on this link, or on the next
    /// one if the link is down); errc::closed after close(); operation_canceled when
    /// unsubscribed first.
    using done_handler = std::function<void(error_code)>;

    static std::shared_ptr<subscriber> create(executor_type ex, options opts)
    {
        auto s = std::make_shared<subscriber>(pass_key{}, opts);
        std::weak_ptr<subscriber> w = s;
        options link = std::move(opts);
        link.on_connect = [w] {
            if (auto s = w.lock())
                s->link_up();
        };
        link.on_disconnect = [w](error_code ec) {
            if (auto s = w.lock())
                s->link_down(ec);
        };
        s->conn_ = connection::create_impl(std::move(ex), std::move(link), [w](reply r) {
            if (auto s = w.lock())
                s->on_push(r);
        });
        s->conn_->start();
        return s;
    }

    subscriber(pass_key, const options& opts) : on_subscribed_(opts.on_connect), on_disconnect_(opts.on_disconnect) {}

    executor_type get_executor() const noexcept { return conn_->get_executor(); }
    connection::status state() const noexcept { return conn_->state(); }
    /// True while the link is up and every subscription is confirmed on it.
    bool is_active() const noexcept
    {
        if (!link_sent_ || !anchor_active_ || closed_)
            return false;
        for (auto* t : {&channels_, &patterns_})
            for (auto& [name, e] : t->entries)
                if (!e.active)
                    return false;
        return true;
    }
    const std::string& last_error() const noexcept { return conn_->last_error(); }

    /// Delivers messages published to `channel` (exact name) to `on_message`, from the
    /// server's confirmation on. Subscribing again to the same channel replaces the handler.
    void subscribe(std::string channel, message_handler on_message, done_handler on_done = {})
    {
        add(channels_, "SUBSCRIBE", std::move(channel), std::move(on_message), std::move(on_done));
    }

    /// As subscribe(), for a glob-style pattern (PSUBSCRIBE: `news.*`).
    void psubscribe(std::string pattern, message_handler on_message, done_handler on_done = {})
    {
        add(patterns_, "PSUBSCRIBE", std::move(pattern), std::move(on_message), std::move(on_done));
    }

    /// Stops the deliveries of `channel` at once (the server's confirmation is not awaited).
    void unsubscribe(std::string_view channel) { remove(channels_, "UNSUBSCRIBE", channel); }
    void punsubscribe(std::string_view pattern) { remove(patterns_, "PUNSUBSCRIBE", pattern); }

    /// Closes the link for good; pending done handlers run with errc::closed.
    void close()
    {
        if (closed_)
            return;
        closed_ = true;
        announce_pending_ = false;
        for (auto* t : {&channels_, &patterns_})
            for (auto& [name, e] : t->entries)
                fail(e.waiting, errc::closed);
        conn_->close();
    }

private:
    // The first subscription of every link, never left: each link has a confirmation to wait
    // for even with no subscription, and the link never leaves subscribed mode (hiredis 0.14.1
    // copes with a count that passes through 0 with SUBSCRIBEs in flight, through its
    // pending_subs; this does not depend on it).
    static constexpr std::string_view anchor = "ssepp:redis:subscriber";

    struct entry {
        message_handler on_message;
        std::vector<done_handler> waiting;
        bool active = false;
    };
    struct table {
        std::map<std::string, entry, std::less<>> entries;
        // Names whose (P)UNSUBSCRIBE is in flight: a new SUBSCRIBE of the name waits for that
        // reply, so that a confirmation still in flight for the old one is not taken for it.
        std::set<std::string, std::less<>> leaving;
    };

    void add(table& t, std::string_view verb, std::string name, message_handler h, done_handler done)
    {
        if (closed_) {
            if (done)
                post_done(std::move(done), errc::closed);
            return;
        }
        auto [it, fresh] = t.entries.try_emplace(std::move(name));
        it->second.on_message = std::move(h);
        if (!fresh && it->second.active) {
            if (done)
                post_done(std::move(done), {});
            return;
        }
        if (done)
            it->second.waiting.push_back(std::move(done));
        if (fresh && link_sent_ && !t.leaving.contains(it->first)) {
            const std::string_view args[] = {verb, it->first};
            conn_->send_push_command(args);  // if the link is gone, the next one subscribes
        }
    }

    void remove(table& t, std::string_view verb, std::string_view name)
    {
        auto it = t.entries.find(name);
        if (it == t.entries.end())
            return;
        fail(it->second.waiting, std::make_error_code(std::errc::operation_canceled));
        if (link_sent_ && !(&t == &channels_ && name == anchor)) {  // the anchor stays
            const std::string_view args[] = {verb, name};
            if (conn_->send_push_command(args))
                t.leaving.emplace(name);
        }
        t.entries.erase(it);
        // The removed entry may have been the last one unconfirmed.
        asio::post(get_executor(), [w = weak_from_this()] {
            if (auto s = w.lock())
                s->maybe_announce();
        });
    }

    void link_up()
    {
        if (closed_)
            return;
        anchor_active_ = false;
        announce_pending_ = true;
        std::vector<std::string_view> args{"SUBSCRIBE", anchor};
        for (auto& [name, e] : channels_.entries)
            args.push_back(name);
        link_sent_ = conn_->send_push_command(args);
        if (!patterns_.entries.empty()) {
            args.assign({"PSUBSCRIBE"});
            for (auto& [name, e] : patterns_.entries)
                args.push_back(name);
            conn_->send_push_command(args);
        }
    }

    void link_down(error_code ec)
    {
        link_sent_ = anchor_active_ = announce_pending_ = false;
        for (auto* t : {&channels_, &patterns_}) {
            t->leaving.clear();
            for (auto& [name, e] : t->entries)
                e.active = false;
        }
        if (on_disconnect_)
            on_disconnect_(ec);
    }

    void on_push(const reply& r)
    {
        if (!r.is_array() || r.size() < 3 || !r[0].is_string())
            return;
        const std::string& kind = r[0].str();
        if (kind == "message") {
            dispatch(channels_, r[1].str(), r[1].str(), r[2].str());
        } else if (kind == "pmessage" && r.size() >= 4) {
            dispatch(patterns_, r[1].str(), r[2].str(), r[3].str());
        } else if (kind == "subscribe" || kind == "psubscribe") {
            confirmed(kind == "subscribe" ? channels_ : patterns_, r[1].str());
        } else if (kind == "unsubscribe" || kind == "punsubscribe") {
            table& t = kind == "unsubscribe" ? channels_ : patterns_;
            t.leaving.erase(r[1].str());
            if (auto it = t.entries.find(r[1].str()); it != t.entries.end() && link_sent_) {
                it->second.active = false;  // subscribed again meanwhile: now it can be sent
                const std::string_view args[] = {kind == "unsubscribe" ? "SUBSCRIBE" : "PSUBSCRIBE", it->first};
                conn_->send_push_command(args);
            }
        }
    }

    void dispatch(table& t, const std::string& key, std::string_view channel, std::string_view payload)
    {
        auto it = t.entries.find(key);
        if (it == t.entries.end() || !it->second.on_message)
            return;
        auto h = it->second.on_message;  // the handler may unsubscribe itself
        h(channel, payload);
    }

    void confirmed(table& t, const std::string& name)
    {
        if (&t == &channels_ && name == anchor)
            anchor_active_ = true;
        if (!t.leaving.contains(name)) {  // else it confirms what is being undone
            auto it = t.entries.find(name);
            if (it == t.entries.end())
                return;
            it->second.active = true;
            auto waiting = std::move(it->second.waiting);
            it->second.waiting.clear();
            for (auto& done : waiting)
                done({});
        }
        maybe_announce();
    }

    void maybe_announce()
    {
        if (!announce_pending_ || !is_active())
            return;
        announce_pending_ = false;
        if (on_subscribed_)
            on_subscribed_();
    }

    void fail(std::vector<done_handler>& waiting, error_code ec)
    {
        for (auto& done : waiting)
            post_done(std::move(done), ec);
        waiting.clear();
    }

    void post_done(done_handler done, error_code ec)
    {
        asio::post(get_executor(), [done = std::move(done), ec] { done(ec); });
    }

    std::shared_ptr<connection> conn_;
    std::function<void()> on_subscribed_;
    std::function<void(error_code)> on_disconnect_;
    table channels_, patterns_;
    bool link_sent_ = false;     // this link's SUBSCRIBE of everything went out
    bool anchor_active_ = false;
    bool announce_pending_ = false;  // on_subscribed_ is due once this link is all active
    bool closed_ = false;
};

} // namespace ssepp::redis

#endif
