-- wrk script: POST /v1/chat/completions with a prompt that differs on every request, so a
-- tenant's response cache always misses (the peers kit's wrk_chat.lua repeats one body, which
-- a cache answers from the second request on). Same body shape as wrk_chat.lua otherwise.
--
-- usage: WRK_KEY=sk-... wrk -t1 -c32 -d5s -s bench/wrk_unique.lua http://127.0.0.1:8080
-- Run it with -t1: each wrk thread has its own counter, so two threads would repeat prompts.
local key = os.getenv("WRK_KEY") or ""
local model = os.getenv("WRK_MODEL") or "fake-gpt"
-- Each run starts its prompts at WRK_SEED: a run that started from 0 again would repeat the
-- previous run's prompts, and find them in the cache if it kept them. The number is written in
-- letters: digits in a prompt would send it through the PII detectors (6 digits or more can be
-- an IBAN, 8 a phone number), which is not what this script measures.
local counter = tonumber(os.getenv("WRK_SEED") or "0")
-- WRK_NUMBERS=1 adds a date and an amount to every prompt, as real prompts often have: digits
-- enough for the PII detectors to look, and nothing they report.
local numbers = os.getenv("WRK_NUMBERS") == "1" and " Due 2026-11-23, budget 1250000 EUR." or ""

local function letters(n)
  local out = ""
  repeat
    local d = n % 26
    out = string.char(97 + d) .. out
    n = (n - d) / 26
  until n == 0
  return out
end

-- WRK_HISTORY=N puts N earlier turns (user and assistant in turn, about 300 characters each, the
-- same in every request) before the new question, as a chat client sends the conversation so far.
local history = ""
local sentence = "The harbour master said the ships sail north at dawn when the wind turns, and the " ..
                 "crews load grain, timber and wool for the markets across the sea. "
for i = 1, tonumber(os.getenv("WRK_HISTORY") or "0") do
  local role = (i % 2 == 1) and "user" or "assistant"
  history = history .. '{"role":"' .. role .. '","content":"Turn ' .. letters(i) .. '. ' ..
            string.rep(sentence, 2) .. '"},'
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

function request()
  counter = counter + 1
  local body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are a helpful assistant."},' .. history ..
               '{"role":"user","content":"Write one sentence about benchmarking HTTP proxies, number ' ..
               letters(counter) .. '.' .. numbers .. '"}],"max_tokens":64,"temperature":0}'
  return wrk.format("POST", "/v1/chat/completions", nil, body)
end
