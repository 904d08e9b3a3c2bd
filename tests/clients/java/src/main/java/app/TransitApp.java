package app;

import java.net.URI;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;
import java.util.Map;

import org.springframework.vault.authentication.TokenAuthentication;
import org.springframework.vault.client.VaultClientResponseException;
import org.springframework.vault.client.VaultEndpoint;
import org.springframework.vault.core.VaultTemplate;
import org.springframework.vault.core.VaultTransitOperations;
import org.springframework.vault.support.Ciphertext;
import org.springframework.vault.support.Hmac;
import org.springframework.vault.support.Plaintext;
import org.springframework.vault.support.Signature;
import org.springframework.vault.support.VaultDecryptionResult;
import org.springframework.vault.support.VaultEncryptionResult;
import org.springframework.vault.support.VaultHmacRequest;
import org.springframework.vault.support.VaultResponse;
import org.springframework.vault.support.VaultSignRequest;
import org.springframework.vault.support.VaultSignatureVerificationRequest;
import org.springframework.vault.support.VaultTransitKey;

/**
 * The transit scenario of tests/clients/README.md, written as a Spring app
 * would: a {@link VaultTemplate} with token authentication and its
 * {@link VaultTransitOperations}. Prints {@code ok: <step>} after each step;
 * at the first failure prints {@code FAIL: <step>: <why>} and exits 1.
 */
public final class TransitApp {

	private final VaultTemplate vault;

	private final VaultTransitOperations transit;

	private final String mount;

	private Ciphertext first;

	private TransitApp(VaultTemplate vault, String mount) {
		this.vault = vault;
		this.transit = vault.opsForTransit(mount);
		this.mount = mount;
	}

	public static void main(String[] args) {
		VaultEndpoint endpoint = VaultEndpoint.from(URI.create(env("VAULT_ADDR")));
		VaultTemplate vault = new VaultTemplate(endpoint, new TokenAuthentication(env("VAULT_TOKEN")));
		TransitApp app = new TransitApp(vault, System.getenv().getOrDefault("TRANSIT_MOUNT", "transit"));

		step("encrypt-decrypt", app::encryptDecrypt);
		step("batch", app::batch);
		step("sign-verify-ecdsa", app::signVerifyEcdsa);
		step("sign-verify-rsa-pss", () -> app.signVerifyRsa("pss"));
		step("sign-verify-rsa-pkcs1v15", () -> app.signVerifyRsa("pkcs1v15"));
		step("hmac", app::hmac);
		step("datakey", app::datakey);
		step("rotate-rewrap", app::rotateRewrap);
		step("read-key", app::readKey);
		step("denied", app::denied);
	}

	void encryptDecrypt() {
		Plaintext plaintext = Plaintext.of("the quick brown fox");
		first = transit.encrypt("aes", plaintext);
		check(first.getCiphertext().startsWith("vault:v1:"), "ciphertext " + first.getCiphertext());
		Plaintext back = transit.decrypt("aes", first);
		check(back.asString().equals(plaintext.asString()), "decrypted to " + back.asString());
	}

	void batch() {
		List<Plaintext> plaintexts = List.of(Plaintext.of("one"), Plaintext.of("two"), Plaintext.of("three"));
		List<VaultEncryptionResult> encrypted = transit.encrypt("aes", plaintexts);
		check(encrypted.size() == 3, encrypted.size() + " results");
		List<Ciphertext> ciphertexts = encrypted.stream().map(r -> {
			check(r.isSuccessful(), "encrypt: " + r.getCause());
			return r.get();
		}).toList();
		List<VaultDecryptionResult> decrypted = transit.decrypt("aes", ciphertexts);
		check(decrypted.size() == 3, decrypted.size() + " results");
		for (int i = 0; i < 3; i++) {
			VaultDecryptionResult r = decrypted.get(i);
			check(r.isSuccessful(), "decrypt #" + i + ": " + r.getCause());
			String want = plaintexts.get(i).asString();
			check(want.equals(r.getAsString()), "#" + i + " decrypted to " + r.getAsString());
		}
	}

	void signVerifyEcdsa() {
		Plaintext message = Plaintext.of("signed message");
		Signature signature = transit.sign("ec",
				VaultSignRequest.builder().plaintext(message).hashAlgorithm("sha2-256").build());
		check(signature.getSignature().startsWith("vault:v1:"), "signature " + signature.getSignature());
		check(transit.verify("ec", message, signature), "verify said not valid");
		check(!transit.verify("ec", Plaintext.of("another message"), signature), "verify of another message said valid");
	}

	void signVerifyRsa(String signatureAlgorithm) {
		Plaintext message = Plaintext.of("signed message");
		Signature signature = transit.sign("rsa", VaultSignRequest.builder()
			.plaintext(message)
			.hashAlgorithm("sha2-256")
			.signatureAlgorithm(signatureAlgorithm)
			.build());
		check(signature.getSignature().startsWith("vault:v1:"), "signature " + signature.getSignature());
		check(rsaValid(message, signature, signatureAlgorithm), "verify said not valid");
		check(!rsaValid(Plaintext.of("another message"), signature, signatureAlgorithm),
				"verify of another message said valid");
	}

	private boolean rsaValid(Plaintext message, Signature signature, String signatureAlgorithm) {
		return transit.verify("rsa", VaultSignatureVerificationRequest.builder()
			.plaintext(message)
			.signature(signature)
			.hashAlgorithm("sha2-256")
			.signatureAlgorithm(signatureAlgorithm)
			.build()).isValid();
	}

	void hmac() {
		Plaintext message = Plaintext.of("mac'd message");
		Hmac hmac = transit.getHmac("mac", VaultHmacRequest.builder().plaintext(message).algorithm("sha2-256").build());
		check(hmac.getHmac().startsWith("vault:v1:"), "hmac " + hmac.getHmac());
		check(transit.verify("mac", VaultSignatureVerificationRequest.create(message, hmac)).isValid(),
				"verify said not valid");
		check(!transit.verify("mac", VaultSignatureVerificationRequest.create(Plaintext.of("another"), hmac)).isValid(),
				"verify of another message said valid");
	}

	/** VaultTransitOperations has no data-key method: written as a Spring app would, with VaultTemplate. */
	void datakey() {
		Map<String, Object> plain = data(vault.write(mount + "/datakey/plaintext/aes", Map.of("bits", 256)));
		byte[] key = Base64.getDecoder().decode((String) plain.get("plaintext"));
		check(key.length == 32, "plaintext key of " + key.length + " bytes");
		Ciphertext wrapped = Ciphertext.of((String) plain.get("ciphertext"));
		check(wrapped.getCiphertext().startsWith("vault:v1:"), "ciphertext " + wrapped.getCiphertext());
		check(Arrays.equals(transit.decrypt("aes", wrapped).getPlaintext(), key), "ciphertext decrypts to another key");

		Map<String, Object> only = data(vault.write(mount + "/datakey/wrapped/aes", null));
		check(only.get("ciphertext") instanceof String c && c.startsWith("vault:v1:"), "wrapped: ciphertext " + only.get("ciphertext"));
		check(only.get("plaintext") == null, "wrapped: a plaintext came back");
	}

	void rotateRewrap() {
		transit.rotate("aes");
		VaultTransitKey key = transit.getKey("aes");
		check(key != null, "key aes not found");
		check(key.getLatestVersion() == 2, "latest_version " + key.getLatestVersion());
		String rewrapped = transit.rewrap("aes", first.getCiphertext());
		check(rewrapped.startsWith("vault:v2:"), "rewrapped " + rewrapped);
		check(transit.decrypt("aes", rewrapped).equals("the quick brown fox"), "rewrapped ciphertext decrypts wrong");
	}

	void readKey() {
		VaultTransitKey key = transit.getKey("ec");
		check(key != null, "key ec not found");
		check("ecdsa-p256".equals(key.getType()), "type " + key.getType());
		Object version = key.getKeys().get("1");
		check(version instanceof Map<?, ?>, "keys[\"1\"] is " + version);
		Object pem = ((Map<?, ?>) version).get("public_key");
		check(pem instanceof String s && s.startsWith("-----BEGIN PUBLIC KEY-----"), "public_key " + pem);
	}

	void denied() {
		try {
			transit.encrypt("secret", Plaintext.of("not allowed"));
		} catch (VaultClientResponseException e) {
			check(e.getStatusCode().value() == 403, e.getMessage());
			return;
		}
		throw new StepFailed("encrypt with secret succeeded");
	}

	private static Map<String, Object> data(VaultResponse response) {
		check(response != null, "no response");
		return response.getRequiredData();
	}

	private static void step(String name, Runnable step) {
		try {
			step.run();
		} catch (RuntimeException e) {
			String why = e instanceof StepFailed ? e.getMessage() : e.toString();
			System.out.println("FAIL: " + name + ": " + why);
			System.exit(1);
		}
		System.out.println("ok: " + name);
	}

	private static void check(boolean condition, String why) {
		if (!condition) {
			throw new StepFailed(why);
		}
	}

	private static String env(String name) {
		String value = System.getenv(name);
		if (value == null || value.isEmpty()) {
			System.out.println("FAIL: setup: " + name + " is not set");
			System.exit(1);
		}
		return value;
	}

	/** A check that did not hold: its message is the reason printed. */
	private static final class StepFailed extends RuntimeException {

		StepFailed(String why) {
			super(why);
		}

	}

}
