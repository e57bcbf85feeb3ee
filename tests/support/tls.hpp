// tests/support/tls.hpp
// TLS for the connection tests: a self-signed certificate made at run time with the OpenSSL
// API (nothing on disk), a server context that uses it, and a blocking SSE client over
// asio::ssl::stream that pins exactly that certificate.
#pragma once

#include "loopback.hpp"

#include "asio_ssl.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace test {

/// A self-signed certificate for 127.0.0.1 (CN and subjectAltName; P-256 key, SHA-256), as PEM.
struct self_signed {
    std::string certificate_pem;
    std::string private_key_pem;

    static self_signed make()
    {
        const auto fail = [](const char* what) { throw std::runtime_error(std::string("OpenSSL: ") + what); };
        std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), &EVP_PKEY_free);
        if (!key)
            fail("EVP_EC_gen");
        std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), &X509_free);
        if (!cert)
            fail("X509_new");
        X509_set_version(cert.get(), 2);  // v3
        ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
        X509_gmtime_adj(X509_getm_notAfter(cert.get()), 60L * 60 * 24);
        X509_set_pubkey(cert.get(), key.get());
        X509_NAME* name = X509_get_subject_name(cert.get());
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"),
                                   -1, -1, 0);
        X509_set_issuer_name(cert.get(), name);
        // Clients match an IP address against the subjectAltName, not the CN.
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
        X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "IP:127.0.0.1");
        if (!san)
            fail("subjectAltName");
        X509_add_ext(cert.get(), san, -1);
        X509_EXTENSION_free(san);
        if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0)
            fail("X509_sign");

        const auto to_pem = [&](auto write) {
            std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
            if (!bio || write(bio.get()) != 1)
                fail("PEM_write");
            char* data = nullptr;
            const long n = BIO_get_mem_data(bio.get(), &data);
            return std::string(data, static_cast<std::size_t>(n));
        };
        self_signed out;
        out.certificate_pem = to_pem([&](BIO* b) { return PEM_write_bio_X509(b, cert.get()); });
        out.private_key_pem = to_pem([&](BIO* b) {
            return PEM_write_bio_PrivateKey(b, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
        });
        return out;
    }

    /// A TLS server context with this certificate and key, loaded from memory.
    asio::ssl::context server_context() const
    {
        asio::ssl::context ctx(asio::ssl::context::tls_server);
        ctx.use_certificate(asio::buffer(certificate_pem), asio::ssl::context::pem);
        ctx.use_private_key(asio::buffer(private_key_pem), asio::ssl::context::pem);
        return ctx;
    }

    /// A TLS client context that trusts exactly this certificate (pinned) and nothing else.
    asio::ssl::context client_context() const
    {
        asio::ssl::context ctx(asio::ssl::context::tls_client);
        ctx.add_certificate_authority(asio::buffer(certificate_pem));
        ctx.set_verify_mode(asio::ssl::verify_peer);
        return ctx;
    }
};

/// Holds the client's TLS context; a base so that it outlives the stream.
struct tls_client_context {
    explicit tls_client_context(asio::ssl::context c) : ctx_(std::move(c)) {}
    asio::ssl::context ctx_;
};

/// An SSE client over TLS: connects to 127.0.0.1:port, does the handshake (verifying the
/// server against the pinned certificate and its name), sends a GET request.
class tls_client : private tls_client_context, public stream_client<asio::ssl::stream<asio::ip::tcp::socket>> {
public:
    tls_client(asio::ip::port_type port, const self_signed& pinned, std::string path = "/events")
        : tls_client_context(pinned.client_context()), stream_client(true, ctx_)
    {
        stream_.set_verify_callback(asio::ssl::host_name_verification("127.0.0.1"));
        stream_.lowest_layer().connect({asio::ip::make_address("127.0.0.1"), port});
        ssepp::error_code hs;
        bool done = false;
        stream_.async_handshake(asio::ssl::stream_base::client, [&](ssepp::error_code ec) {
            hs = ec;
            done = true;
        });
        run_for(5s);
        if (!done)
            throw std::runtime_error("test::tls_client: handshake timed out");
        if (hs)
            throw ssepp::system_error(hs, "test::tls_client: handshake");
        const auto request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        asio::write(stream_, asio::buffer(request));
    }

    /// Closes the TCP connection under TLS, without close_notify.
    void close() { stream_.lowest_layer().close(); }
};

} // namespace test
