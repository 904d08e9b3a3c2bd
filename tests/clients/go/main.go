// Command transit-app runs the transit scenario of tests/clients/README.md
// with HashiCorp's Go client, github.com/hashicorp/vault/api, as a Go app
// would: api.DefaultConfig() reads VAULT_ADDR (http://… or unix:///…) and
// VAULT_TOKEN, and every transit call goes through client.Logical().
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/vault/api"
)

// transit is the app's view of one transit mount.
type transit struct {
	logical *api.Logical
	mount   string
}

func main() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		fmt.Printf("FAIL: setup: %v\n", err)
		os.Exit(1)
	}
	mount := os.Getenv("TRANSIT_MOUNT")
	if mount == "" {
		mount = "transit"
	}
	t := transit{logical: client.Logical(), mount: mount}

	steps := []struct {
		name string
		run  func() error
	}{
		{"encrypt-decrypt", t.encryptDecrypt},
		{"batch", t.batch},
		{"sign-verify-ecdsa", func() error { return t.signVerify("ec", nil) }},
		{"sign-verify-rsa-pss", func() error {
			return t.signVerify("rsa", map[string]interface{}{"signature_algorithm": "pss"})
		}},
		{"sign-verify-rsa-pkcs1v15", func() error {
			return t.signVerify("rsa", map[string]interface{}{"signature_algorithm": "pkcs1v15"})
		}},
		{"hmac", t.hmac},
		{"datakey", t.datakey},
		{"rotate-rewrap", t.rotateRewrap},
		{"read-key", t.readKey},
		{"denied", t.denied},
	}
	for _, step := range steps {
		if err := step.run(); err != nil {
			fmt.Printf("FAIL: %s: %v\n", step.name, err)
			os.Exit(1)
		}
		fmt.Printf("ok: %s\n", step.name)
	}
}

const message = "the quick brown fox"

// firstCiphertext is step 1's ciphertext, rewrapped in step 8.
var firstCiphertext string

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// write is a transit write (PUT /v1/<mount>/<path>) that must answer data.
func (t transit) write(path string, body map[string]interface{}) (map[string]interface{}, error) {
	secret, err := t.logical.Write(t.mount+"/"+path, body)
	if err != nil {
		return nil, err
	}
	if secret == nil || secret.Data == nil {
		return nil, fmt.Errorf("%s: no data in the answer", path)
	}
	return secret.Data, nil
}

// str is data[field] as a string, or an error naming the field.
func str(data map[string]interface{}, field string) (string, error) {
	s, ok := data[field].(string)
	if !ok {
		return "", fmt.Errorf("no string %q in %v", field, data)
	}
	return s, nil
}

func (t transit) encrypt(key, plaintext string) (string, error) {
	data, err := t.write("encrypt/"+key, map[string]interface{}{"plaintext": b64(plaintext)})
	if err != nil {
		return "", err
	}
	return str(data, "ciphertext")
}

// decrypt gives the plaintext's bytes, decoded from base64.
func (t transit) decrypt(key, ciphertext string) ([]byte, error) {
	data, err := t.write("decrypt/"+key, map[string]interface{}{"ciphertext": ciphertext})
	if err != nil {
		return nil, err
	}
	p, err := str(data, "plaintext")
	if err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(p)
}

func (t transit) encryptDecrypt() error {
	ct, err := t.encrypt("aes", message)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(ct, "vault:v1:") {
		return fmt.Errorf("ciphertext %q does not start with vault:v1:", ct)
	}
	pt, err := t.decrypt("aes", ct)
	if err != nil {
		return err
	}
	if string(pt) != message {
		return fmt.Errorf("decrypted %q, not %q", pt, message)
	}
	firstCiphertext = ct
	return nil
}

// batchResults is data.batch_results, each item checked for an error.
func batchResults(data map[string]interface{}, field string, want int) ([]string, error) {
	items, ok := data["batch_results"].([]interface{})
	if !ok || len(items) != want {
		return nil, fmt.Errorf("batch_results is not %d items: %v", want, data)
	}
	out := make([]string, 0, want)
	for i, item := range items {
		m, ok := item.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("batch_results[%d] is not an object: %v", i, item)
		}
		if e, _ := m["error"].(string); e != "" {
			return nil, fmt.Errorf("batch_results[%d]: %s", i, e)
		}
		s, err := str(m, field)
		if err != nil {
			return nil, fmt.Errorf("batch_results[%d]: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func (t transit) batch() error {
	plaintexts := []string{"one", "two", "three"}
	var input []map[string]interface{}
	for _, p := range plaintexts {
		input = append(input, map[string]interface{}{"plaintext": b64(p)})
	}
	data, err := t.write("encrypt/aes", map[string]interface{}{"batch_input": input})
	if err != nil {
		return err
	}
	cts, err := batchResults(data, "ciphertext", len(plaintexts))
	if err != nil {
		return err
	}
	input = input[:0]
	for _, ct := range cts {
		input = append(input, map[string]interface{}{"ciphertext": ct})
	}
	data, err = t.write("decrypt/aes", map[string]interface{}{"batch_input": input})
	if err != nil {
		return err
	}
	pts, err := batchResults(data, "plaintext", len(plaintexts))
	if err != nil {
		return err
	}
	for i, p := range pts {
		got, err := base64.StdEncoding.DecodeString(p)
		if err != nil || string(got) != plaintexts[i] {
			return fmt.Errorf("batch_results[%d] decrypts to %q, not %q", i, got, plaintexts[i])
		}
	}
	return nil
}

// valid is data.valid, which must be a boolean.
func valid(data map[string]interface{}) (bool, error) {
	v, ok := data["valid"].(bool)
	if !ok {
		return false, fmt.Errorf("no boolean valid in %v", data)
	}
	return v, nil
}

// verifies checks that verify/<key> with `field` (signature or hmac) says
// valid for the message and not valid for another one.
func (t transit) verifies(key, field, value string, extra map[string]interface{}) error {
	for _, c := range []struct {
		input string
		want  bool
	}{{message, true}, {"another message", false}} {
		body := map[string]interface{}{"input": b64(c.input), field: value}
		for k, v := range extra {
			body[k] = v
		}
		data, err := t.write("verify/"+key, body)
		if err != nil {
			return err
		}
		ok, err := valid(data)
		if err != nil {
			return err
		}
		if ok != c.want {
			return fmt.Errorf("verify of %q says valid=%v", c.input, ok)
		}
	}
	return nil
}

func (t transit) signVerify(key string, extra map[string]interface{}) error {
	body := map[string]interface{}{"input": b64(message), "hash_algorithm": "sha2-256"}
	for k, v := range extra {
		body[k] = v
	}
	data, err := t.write("sign/"+key, body)
	if err != nil {
		return err
	}
	sig, err := str(data, "signature")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(sig, "vault:v1:") {
		return fmt.Errorf("signature %q does not start with vault:v1:", sig)
	}
	delete(body, "input")
	return t.verifies(key, "signature", sig, body)
}

func (t transit) hmac() error {
	data, err := t.write("hmac/mac/sha2-256", map[string]interface{}{"input": b64(message)})
	if err != nil {
		return err
	}
	mac, err := str(data, "hmac")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(mac, "vault:v1:") {
		return fmt.Errorf("hmac %q does not start with vault:v1:", mac)
	}
	return t.verifies("mac/sha2-256", "hmac", mac, nil)
}

func (t transit) datakey() error {
	data, err := t.write("datakey/plaintext/aes", nil)
	if err != nil {
		return err
	}
	p, err := str(data, "plaintext")
	if err != nil {
		return err
	}
	key, err := base64.StdEncoding.DecodeString(p)
	if err != nil || len(key) != 32 {
		return fmt.Errorf("plaintext is not a 32-byte key in base64: %q", p)
	}
	ct, err := str(data, "ciphertext")
	if err != nil {
		return err
	}
	back, err := t.decrypt("aes", ct)
	if err != nil {
		return err
	}
	if !bytes.Equal(back, key) {
		return errors.New("the data key's ciphertext does not decrypt to its plaintext")
	}
	data, err = t.write("datakey/wrapped/aes", nil)
	if err != nil {
		return err
	}
	if _, err := str(data, "ciphertext"); err != nil {
		return err
	}
	if p, ok := data["plaintext"]; ok && p != nil {
		return fmt.Errorf("datakey/wrapped gave a plaintext: %v", p)
	}
	return nil
}

func (t transit) rotateRewrap() error {
	if _, err := t.logical.Write(t.mount+"/keys/aes/rotate", nil); err != nil {
		return err
	}
	secret, err := t.logical.Read(t.mount + "/keys/aes")
	if err != nil {
		return err
	}
	if secret == nil {
		return errors.New("keys/aes: not found")
	}
	latest, ok := secret.Data["latest_version"].(json.Number)
	if !ok || latest.String() != "2" {
		return fmt.Errorf("latest_version is %v, not 2", secret.Data["latest_version"])
	}
	data, err := t.write("rewrap/aes", map[string]interface{}{"ciphertext": firstCiphertext})
	if err != nil {
		return err
	}
	ct, err := str(data, "ciphertext")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(ct, "vault:v2:") {
		return fmt.Errorf("rewrapped ciphertext %q does not start with vault:v2:", ct)
	}
	pt, err := t.decrypt("aes", ct)
	if err != nil {
		return err
	}
	if string(pt) != message {
		return fmt.Errorf("rewrapped ciphertext decrypts to %q", pt)
	}
	return nil
}

func (t transit) readKey() error {
	secret, err := t.logical.Read(t.mount + "/keys/ec")
	if err != nil {
		return err
	}
	if secret == nil {
		return errors.New("keys/ec: not found")
	}
	if kind := secret.Data["type"]; kind != "ecdsa-p256" {
		return fmt.Errorf("type is %v, not ecdsa-p256", kind)
	}
	keys, _ := secret.Data["keys"].(map[string]interface{})
	first, _ := keys["1"].(map[string]interface{})
	pub, _ := first["public_key"].(string)
	block, _ := pem.Decode([]byte(pub))
	if block == nil || block.Type != "PUBLIC KEY" {
		return fmt.Errorf("keys[\"1\"].public_key is not a PEM public key: %v", secret.Data["keys"])
	}
	return nil
}

func (t transit) denied() error {
	_, err := t.encrypt("secret", message)
	var resp *api.ResponseError
	if !errors.As(err, &resp) {
		return fmt.Errorf("encrypt with secret was not refused by the server: %v", err)
	}
	if resp.StatusCode != http.StatusForbidden {
		return fmt.Errorf("encrypt with secret answered HTTP %d, not 403: %v", resp.StatusCode, resp)
	}
	return nil
}
